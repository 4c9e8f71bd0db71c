"""parity: prove (or disprove) that two LLM inference backends behave the same for RL."""

__version__ = "0.1.0"
