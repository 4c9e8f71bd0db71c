"""Benchmarks (`parity bench ...`, `python -m parity.bench ...`): where a run's wall time goes, the
metrics at 1M tokens, reference scoring at a real shape, CPU binding, run-to-run noise."""
