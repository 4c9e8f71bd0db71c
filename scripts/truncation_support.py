"""Where the engine's and the reference's top-k/top-p supports part, and why: for every sampled
token of a `logprobs` run that the reference's processed distribution excludes, the reference's
own view of that position (the sampled token's rank, its tempered logit below the reference's
top logit) next to the same for all positions, and vLLM's sampler op run on the reference's
logits (does vLLM's rule, given the reference's numbers, keep the token?).

    .venv/bin/python scripts/truncation_support.py RUN_DIR --model smollm2-135m \
        --source arithmetic:64 --temperature 1.5 --top-p 0.3 --top-k 3

The reference is the HF model in its dtype with an fp32 lm_head (parity's default reference).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from parity.run.prompts import load_prompts, render
from parity.setup.models import resolve_model


def reference_logits(model, prompt: list[int], tokens: list[int]):
    """fp32 logits [len(tokens), V] predicting each sampled token (bf16 body, fp32 head)."""
    import torch  # lazy: torch takes seconds to import

    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0].float()
        head = model.get_output_embeddings().weight.float()
        logits = hidden @ head.T
    start = len(prompt) - 1
    return logits[start : start + len(tokens)]


def main() -> None:
    import torch  # lazy: torch takes seconds to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch  # lazy: heavy

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--source", default="arithmetic:64")
    ap.add_argument("--temperature", type=float, default=1.5)
    ap.add_argument("--top-p", type=float, default=0.3)
    ap.add_argument("--top-k", type=int, default=3)
    a = ap.parse_args()
    path = resolve_model(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
    prompts = render(tok, load_prompts(a.source, None, 0))
    rows = pd.read_parquet(a.run_dir / "tokens.parquet")
    gaps_all, gaps_out, ranks_out, vllm_keeps, raw_err = [], [], [], 0, []
    for (pi, _), seq in rows.groupby(["prompt_index", "sequence_id"]):
        seq = seq.sort_values("position")
        tokens = seq["token_id"].tolist()
        logits = reference_logits(model, prompts[pi], tokens) / a.temperature
        raw = logits.double().mul(a.temperature).log_softmax(-1)
        idx = torch.arange(len(tokens))
        tok_t = torch.tensor(tokens)
        raw_err += (raw[idx, tok_t].numpy() - seq["trainer_raw_logprob"].to_numpy()).tolist()
        top = logits.topk(2, dim=-1).values
        at = logits[idx, tok_t]
        gaps_all += (top[:, 0] - top[:, 1]).tolist()
        n = len(tokens)
        kept = torch.isfinite(
            apply_top_k_top_p_pytorch(
                logits.clone(),
                torch.full((n,), a.top_k),
                torch.full((n,), a.top_p, dtype=torch.float32),
                allow_cpu_sync=True,
            )
        )
        out = ~np.isfinite(seq["trainer_logprob"].to_numpy())
        for i in np.nonzero(out)[0]:
            gaps_out.append(float(top[i, 0] - at[i]))
            ranks_out.append(int((logits[i] > at[i]).sum()) + 1)
            vllm_keeps += bool(kept[i, tokens[i]])
    gaps_all = np.asarray(gaps_all)
    print(f"positions {len(gaps_all)}, excluded by the reference {len(gaps_out)}")
    print(f"reference raw logprob recomputed: max |diff| {np.max(np.abs(raw_err)):.2e}")
    print(f"vLLM's op on the reference's logits keeps {vllm_keeps} of the excluded tokens")
    print(f"excluded tokens' rank in the reference: {sorted(ranks_out)}")
    print(
        "excluded tokens' tempered logit below the reference's top (nats): "
        + ", ".join(f"{g:.3f}" for g in sorted(gaps_out))
    )
    q = np.quantile(gaps_all, [0.01, 0.05, 0.5])
    print(
        f"top-1 minus top-2 tempered logit, all positions: 1% {q[0]:.3f}, 5% {q[1]:.3f}, "
        f"median {q[2]:.3f}; share below 0.1: {np.mean(gaps_all < 0.1):.4f}"
    )


if __name__ == "__main__":
    main()
