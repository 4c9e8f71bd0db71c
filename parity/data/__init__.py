"""Per-token tables on disk: atomic writes, parquet/CSV/JSONL readers and writers, the column
schemas of tokens.parquet and exported sequences, and trainer dumps read into one shape."""
