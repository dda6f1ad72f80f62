"""The lm-eval task `surname_endings` (YAML, JSONL) and the script that makes its documents."""
