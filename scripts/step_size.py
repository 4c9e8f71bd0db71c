"""How far an update moves logprobs, and how far each stale component would put an engine from
the new weights: tokens sampled by the old model (HF transformers, fp32, T=1) on the built-in
prompts, scored teacher-forced under the old weights, the new ones, and the new ones with one
component kept old (decoder layer i, the embeddings / tied head, every norm); mean |dlogp| to
the new weights (docs/measurements.md#rl-step-size).

    .venv/bin/python scripts/step_size.py --model smollm2-135m --steps 2 --lr 1e-5
    .venv/bin/python scripts/step_size.py --model tiny --scale 1.0     # a perturbation instead
"""

from __future__ import annotations

import argparse

import numpy as np

from parity.run.prompts import load_prompts, render
from parity.setup.models import perturb, resolve_model
from parity.setup.trainstep import train_step


def _logprobs(model, prompt, tokens):
    import torch  # lazy: heavy

    ids = torch.tensor([prompt + tokens])
    with torch.inference_mode():
        logp = model(ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    return logp.gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1).double().numpy()


def _with_old(model, old_state, keep):
    """Put the old values into `model`'s tensors selected by `keep(name)`; returns a function
    that puts the model's own values back."""
    import torch  # lazy: heavy

    state = model.state_dict()
    saved = {n: state[n].clone() for n in state if keep(n)}
    with torch.no_grad():
        for name in saved:
            state[name].copy_(old_state[name])

    def restore():
        with torch.no_grad():
            for name, value in saved.items():
                state[name].copy_(value)

    return restore


def main() -> None:
    import torch  # lazy: heavy
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=None, help="a perturbation instead")
    ap.add_argument("--source", default="arithmetic:24")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    old_path = resolve_model(args.model)
    if args.scale is not None:
        new_path = perturb(args.model, args.seed, args.scale)
    else:
        new_path = train_step(args.model, args.seed, args.steps, args.lr)
    tok = AutoTokenizer.from_pretrained(old_path)
    prompts = render(tok, load_prompts(args.source, None, 0))
    old = AutoModelForCausalLM.from_pretrained(old_path, dtype=torch.float32).eval()
    new = AutoModelForCausalLM.from_pretrained(new_path, dtype=torch.float32).eval()
    torch.manual_seed(7)
    samples = []
    for p in prompts:
        with torch.inference_mode():
            out = old.generate(
                torch.tensor([p]),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.max_tokens,
            )
        samples.append((p, out[0, len(p) :].tolist()))
    old_state = {n: t.clone() for n, t in old.state_dict().items()}
    n_layers = old.config.num_hidden_layers
    stale = {"old": lambda n: True, "new": lambda n: False}
    for i in sorted({0, 1, n_layers // 2, n_layers - 1}):
        stale[f"layer {i} old"] = lambda n, i=i: f".layers.{i}." in n
    stale["embeddings/head old"] = lambda n: "embed_tokens" in n or n.startswith("lm_head")
    stale["norms old"] = lambda n: "norm" in n
    del old
    ref = np.concatenate([_logprobs(new, p, t) for p, t in samples])
    print(f"{args.model}: {new_path.name}, {len(samples)} prompts, {ref.size} tokens", flush=True)
    for label, keep in stale.items():
        restore = _with_old(new, old_state, keep)
        got = np.concatenate([_logprobs(new, p, t) for p, t in samples])
        restore()
        d = np.abs(got - ref)
        print(f"  {label:22s} mean |dlogp| to new {d.mean():.3g}  (max {d.max():.3g})", flush=True)


if __name__ == "__main__":
    main()
