"""Verdicts: findings (tests that can fail), their statistics and the per-token mismatch metrics.
Pure functions over arrays: no I/O, no torch, no engine types."""
