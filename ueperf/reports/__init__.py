"""Run records (JSONL), summaries, tables and plots."""
