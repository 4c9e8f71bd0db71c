"""A checkpoint one real training step away from a model: a few AdamW steps of a supervised
(next-token) loss on built-in arithmetic question-answer texts, on CPU, with a fixed seed,
built once into the model cache and keyed by the base weights and the recipe. Old -> new then
moves logprobs by the size of one RL step, not by the whole-model noise of `models.perturb`
(docs/measurements.md#rl-step-size)."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from parity.setup.modelbuild import Log, ModelError, build_once, offline
from parity.setup.models import copy_side_files, derived_checkpoint

# Bump when the recipe below changes what it writes (the cache key holds it).
RECIPE = "sft-adamw-v1"
BATCH = 16  # texts per optimizer step


def qa_texts(n: int, seed: int) -> list[str]:
    """`n` arithmetic questions with their answers ("What is 12 + 7? 19"), deterministic for a
    seed: the built-in prompts' task, answered, as a trainer's SFT batch."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if rng.random() < 0.5:
            texts.append(f"What is {a} + {b}? {a + b}")
        else:
            a, b = max(a, b), min(a, b)
            texts.append(f"What is {a} - {b}? {a - b}")
    return texts


def train_step(
    base: str | os.PathLike,
    seed: int = 1,
    steps: int = 2,
    lr: float = 1e-5,
    out: str | os.PathLike | None = None,
    log: Log = print,
) -> Path:
    """`base` after `steps` AdamW steps (lr `lr`, no weight decay, batches of BATCH texts of
    `qa_texts`, mean next-token cross-entropy), trained in float32 and saved in float32 (a step
    this size rounds away in bf16: an RL trainer keeps fp32 master weights too). Only the
    tensors `base`'s files hold are written (a tied head stays tied).

    Args:
        base: anything resolve_model accepts.
        seed: the texts and torch's seed.
        steps: optimizer steps (>= 1).
        lr: AdamW learning rate (> 0).
        out: target directory; default `<cache>/models/<base>-sft-s<seed>-n<steps>-lr<lr>`.
    Returns:
        The new checkpoint directory (reused if already built from the same base and recipe).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ModelError(f"training steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ModelError(f"learning rate must be a finite number > 0, got {lr}")
    src, target, meta = derived_checkpoint(base, f"sft-s{seed}-n{steps}-lr{lr:g}", out, log)
    meta.update(
        {"recipe": RECIPE, "seed": int(seed), "steps": int(steps), "lr": float(lr), "batch": BATCH}
    )
    return build_once(
        target, lambda tmp: _train_into(src, tmp, int(seed), steps, float(lr)), meta, False, log
    )


def _train_into(src: Path, out: Path, seed: int, steps: int, lr: float) -> None:
    offline()
    import torch  # lazy: torch takes seconds to import
    from safetensors import safe_open  # lazy: only when a checkpoint is built
    from safetensors.torch import save_file  # lazy: safetensors.torch imports torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers imports torch

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    texts = qa_texts(steps * BATCH, seed)
    for step in range(steps):
        opt.zero_grad()
        for text in texts[step * BATCH : (step + 1) * BATCH]:
            ids = torch.tensor([tok(text)["input_ids"]])
            (model(input_ids=ids, labels=ids).loss / BATCH).backward()
        opt.step()
    state = model.state_dict()
    copy_side_files(src, out)
    for weights in sorted(src.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
        missing = [n for n in names if n not in state]
        if missing:
            raise ModelError(f"trained model has no tensor(s) {missing[:5]} of {weights.name}")
        tensors = {n: state[n].detach().float().contiguous().clone() for n in names}
        save_file(tensors, str(out / weights.name), metadata={"format": "pt"})
