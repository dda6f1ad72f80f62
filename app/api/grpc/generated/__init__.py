"""Stubs generated from ../protos by ../regenerate.py; never edited by hand."""
