"""Summarization (chapters "Summarization I" and "Summarization II")."""
