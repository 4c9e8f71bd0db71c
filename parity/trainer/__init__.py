"""The trainer side: scoring sampled tokens the way an RL trainer does (HF transformers reference,
output heads, the sampler's transform), split scoring across a weight update, hybrid
hypotheses, and trainer logprobs computed outside parity."""
