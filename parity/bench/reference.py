"""`python -m parity.bench reference ...` (a benchmark, never a timed test)
scores random (prompt, completion) pairs with the trainer-side reference on a randomly
initialised model of a real shape (default: Llama 3.2 1B, vocabulary 128256, tied head, bf16),
built locally once, and prints seconds, tokens/s and peak memory per configuration.

Each configuration runs in a fresh process, so its peak RSS is its own; the floor is one
batched forward plus the head matmul over the same tokens (what scoring cannot go below)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from parity.engines.base import SamplingSpec
from parity.setup.paths import cache_dir
from parity.trainer.reference import Reference

SHAPES = {  # name -> (hidden, intermediate, layers, heads, kv heads, vocab)
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "8b": (4096, 14336, 32, 32, 8, 128256),
}


def model_path(shape: str, layers: int | None, vocab: int | None) -> Path:

    h, i, n, a, kv, v = SHAPES[shape]
    return cache_dir() / "bench" / f"llama-{shape}-L{layers or n}-V{vocab or v}"


def build(shape: str, layers: int | None, vocab: int | None) -> Path:
    """A randomly initialised Llama of `shape` (optionally fewer layers / another vocabulary),
    bf16, tied embeddings, saved once under the cache directory."""
    path = model_path(shape, layers, vocab)
    if (path / "config.json").exists():
        return path
    import torch  # lazy: torch takes seconds to import
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy: transformers imports torch

    h, i, n, a, kv, v = SHAPES[shape]
    config = LlamaConfig(
        hidden_size=h,
        intermediate_size=i,
        num_hidden_layers=layers or n,
        num_attention_heads=a,
        num_key_value_heads=kv,
        vocab_size=vocab or v,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tmp.rename(path)
    return path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def score_once(args) -> dict:
    """One configuration, in this process: load, score, measure."""

    import torch  # lazy: torch takes seconds to import

    rng = np.random.default_rng(args.seed)
    path = Path(args.model)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    pairs = [
        (
            rng.integers(0, vocab, args.prompt).tolist(),
            rng.integers(0, vocab, args.completion).tolist(),
        )
        for _ in range(args.seqs)
    ]
    sampling = SamplingSpec(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    kwargs = {}
    accepts = inspect.signature(Reference).parameters  # also runs against older Reference code
    if "device" in accepts:
        kwargs["device"] = args.device
    if "chunk_rows" in accepts and args.chunk_rows != "auto":
        kwargs["chunk_rows"] = 10**9 if args.chunk_rows == "all" else int(args.chunk_rows)
    ref = Reference(
        path, args.head_dtype, model_fp=None, max_batch_tokens=args.batch_tokens, **kwargs
    )
    t0 = time.perf_counter()
    ref._load()
    load_s, rss_loaded = time.perf_counter() - t0, _rss_mb()
    device = getattr(ref, "device", "cpu")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scores = ref.score(pairs, sampling)
    if cuda:
        torch.cuda.synchronize()
    score_s = time.perf_counter() - t0
    n_tokens = sum(len(t) for _, t in pairs)
    assert sum(len(s.raw_logprob) for s in scores) == n_tokens
    out = {
        "chunk_rows": ref.stats.get("chunk_rows", "all (before chunking)"),
        "device": device,
        "tokens": n_tokens,
        "load_s": load_s,
        "score_s": score_s,
        "tokens_per_s": n_tokens / score_s,
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "head_cast_block": ref.stats.get("head_cast_block"),
    }
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["floor_s"] = _floor(ref, pairs, cuda)
    return out


def _floor(ref, pairs, cuda: bool) -> float:
    """One batched forward plus the head matmul over the same tokens (the model's own dtype
    head; no sampler transform), batched like the reference."""
    import torch  # lazy: torch takes seconds to import

    model = ref._load()
    out = model.get_output_embeddings()
    t0 = time.perf_counter()
    with torch.inference_mode():
        step = max(1, ref.max_batch_tokens // len(pairs[0][0] + pairs[0][1]))
        for a in range(0, len(pairs), step):
            ids = torch.tensor(
                [p + t for p, t in pairs[a : a + step]],
                device=ref.device if hasattr(ref, "device") else "cpu",
            )
            hidden = model.base_model(input_ids=ids).last_hidden_state
            n_prompt = len(pairs[0][0])
            rows = hidden[:, n_prompt - 1 : -1].reshape(-1, hidden.shape[-1])
            for r in range(0, len(rows), 512):
                out(rows[r : r + 512])
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    r = argparse.ArgumentParser(
        prog="python -m parity.bench reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    r.add_argument("--layers", type=int, help="fewer decoder layers than the shape (faster)")
    r.add_argument("--vocab", type=int, help="another vocabulary size")
    r.add_argument("--seqs", type=int, default=16)
    r.add_argument("--prompt", type=int, default=64)
    r.add_argument("--completion", type=int, default=256)
    r.add_argument("--head-dtype", default="float32", choices=("float32", "model"))
    r.add_argument("--device", default="auto")
    r.add_argument("--batch-tokens", type=int, default=8192)
    r.add_argument(
        "--chunk-rows",
        default="auto",
        help="comma-separated configurations: auto (from free memory), all (one "
        "chunk: the unchunked computation), or a number of positions",
    )
    r.add_argument("--temperature", type=float, default=0.7)
    r.add_argument("--top-p", type=float, default=0.9)
    r.add_argument("--top-k", type=int, default=50)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--model", help=argparse.SUPPRESS)  # set for the child process
    r.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    argv = sys.argv[2:] if argv is None else argv
    args = r.parse_args(argv)
    if args.model:  # the child: one configuration
        print("BENCH " + json.dumps(score_once(args)))
        return 0
    path = build(args.shape, args.layers, args.vocab)
    rows = []
    for chunk in args.chunk_rows.split(","):
        cmd = [
            sys.executable,
            "-m",
            "parity.bench",
            "reference",
            *argv,
            "--chunk-rows",
            chunk,
            "--model",
            str(path),
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])
                ),
            },
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None:
            print(
                f"chunk_rows={chunk}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}",
                file=sys.stderr,
            )
            return 1
        rows.append({"config": chunk, **json.loads(line[6:])})
    if args.json:
        print("\n".join(json.dumps(x) for x in rows))
        return 0
    print(
        f"model {path.name}, {rows[0]['tokens']} scored tokens ({args.seqs} x ({args.prompt} + "
        f"{args.completion})), T {args.temperature} top-p {args.top_p} top-k {args.top_k}, "
        f"{args.head_dtype} head"
    )
    cols = (
        "config",
        "device",
        "chunk_rows",
        "score_s",
        "tokens_per_s",
        "floor_s",
        "rss_loaded_mb",
        "peak_rss_mb",
        "peak_gpu_mb",
    )
    print(" | ".join(cols))
    for x in rows:
        print(
            " | ".join(
                f"{x[c]:.1f}" if isinstance(x.get(c), float) else str(x.get(c, "-")) for c in cols
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
