"""parity's example plugin: the token_count category, the echo engine kind and the demo
trainer-side scorer, each offered through one of parity's entry-point groups (pyproject.toml)."""
