"""How far bf16 numerics move a model's tempered logits, as the spread (max - min over a
position's top tokens) of the logit error, the quantity that moves a top-k/top-p cut
(sampler.cut_distances). Three computations of the same positions: the fp32 model (exact, for
this purpose), parity's reference (bf16 body, fp32 lm_head) and a bf16 model with a bf16 head
(what vLLM computes by default and V0 0.8.5 always). The spread of each against the fp32 model,
and of the bf16 model against the reference, per position over the reference's top `--top` tokens
at temperature T (docs/measurements.md#bf16-logit-noise).

The positions are those of a run's sampled sequences (tokens.parquet, one engine role of one
scenario), teacher-forced:

    .venv/bin/python scripts/bf16_logit_noise.py RUN_DIR --scenario NAME --temperature 0.7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from parity.run.prompts import load_prompts, render
from parity.setup.models import resolve_model


def spreads(err, idx) -> np.ndarray:
    """Per row, max - min of err [N, V] over the columns idx [N, K]."""
    e = err.gather(-1, idx)
    return (e.max(dim=-1).values - e.min(dim=-1).values).double().numpy()


def main() -> None:
    import torch  # lazy: torch takes seconds to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--engine", default="candidate")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top", type=int, default=64, help="tokens per position the spread is over")
    ap.add_argument("--sequences", type=int, default=48, help="at most this many sequences")
    a = ap.parse_args()
    path = resolve_model(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    fp32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = pd.read_parquet(a.run_dir / "tokens.parquet")
    rows = rows[(rows.scenario == a.scenario) & (rows.engine == a.engine)]
    n_prompts = int(rows.prompt_index.max()) + 1
    prompts = render(tok, load_prompts(f"arithmetic:{n_prompts}", None, 0))
    out = {"reference - fp32": [], "bf16 - fp32": [], "bf16 - reference": []}
    for _, s in list(rows.groupby("sequence_id"))[: a.sequences]:
        s = s.sort_values("position")
        prompt = prompts[int(s.prompt_index.iloc[0])]
        seq = torch.tensor([prompt + s.token_id.tolist()])
        with torch.no_grad():
            hidden = bf16.model(input_ids=seq).last_hidden_state[0, len(prompt) - 1 : -1]
            head = bf16.get_output_embeddings().weight
            ref = hidden.float() @ head.float().T  # parity's reference: fp32 head
            low = (hidden @ head.T).float()  # bf16 head, cast afterwards (vLLM's default)
            exact = fp32(input_ids=seq).logits[0, len(prompt) - 1 : -1].float()
        ref, low, exact = (x / a.temperature for x in (ref, low, exact))
        idx = ref.topk(a.top, dim=-1).indices
        out["reference - fp32"].append(spreads(ref - exact, idx))
        out["bf16 - fp32"].append(spreads(low - exact, idx))
        out["bf16 - reference"].append(spreads(low - ref, idx))
    print(f"tempered logit error spread over each position's top {a.top} (T {a.temperature}):")
    for name, values in out.items():
        v = np.concatenate(values)
        q = np.quantile(v, [0.5, 0.9, 0.99])
        print(
            f"  {name:18s} positions {v.size}: median {q[0]:.4f}, p90 {q[1]:.4f}, "
            f"p99 {q[2]:.4f}, max {v.max():.4f}"
        )


if __name__ == "__main__":
    main()
