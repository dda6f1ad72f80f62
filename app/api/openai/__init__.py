"""The OpenAI-compatible completions API and the tokenizer endpoints beside it."""
