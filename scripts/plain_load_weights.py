"""What a plain `model.load_weights` (no layer-wise reload lifecycle) does to a live V1 engine on
vLLM's CPU build: the new checkpoint's tensors, as parity's `via = "tensors"` reads them, handed
to the worker's model in one call per bucket without `initialize_layerwise_reload` /
`finalize_layerwise_reload`; prints the error, if any, and the worker's evidence afterwards
(parity.engines.vllm_evidence) as JSON (docs/measurements.md#tensors-update). Starts one engine:
run it under the engine lock.

    PYTHONPATH=$PWD .venv/bin/python scripts/plain_load_weights.py --model tiny-tied \\
        --new tiny-tied-sft-s1-n2-lr3e-05
"""

from __future__ import annotations

import argparse
import json
import os

from parity.engines import vllm_evidence, vllm_tensors
from parity.setup.models import resolve_model


def plain_on_worker(worker, checkpoint: str, bucket_mb: float) -> dict:
    """collective_rpc target: load_weights per bucket, then the evidence; never raises."""
    model = worker.get_model()
    out: dict = {"error": None}
    try:
        for bucket in vllm_tensors.buckets(vllm_tensors.trainer_tensors(checkpoint), bucket_mb):
            model.load_weights(iter(bucket))
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out.update(vllm_evidence.collect(model, checkpoint))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-tied")
    ap.add_argument("--new", required=True, help="the new checkpoint (a model name or directory)")
    ap.add_argument("--bucket-mb", type=float, default=vllm_tensors.DEFAULT_BUCKET_MB)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # a function through collective_rpc
    from vllm import LLM  # lazy: vLLM takes seconds to import

    llm = LLM(model=str(resolve_model(args.model)), dtype="float32", enforce_eager=True)
    out = llm.collective_rpc(plain_on_worker, args=(str(resolve_model(args.new)), args.bucket_mb))
    ev = out[0].get("evidence") or {}
    keys = ("ok", "modules_checked", "compute_stale", "param_stale")
    print(json.dumps({"error": out[0]["error"], **{k: ev.get(k) for k in keys}}))


if __name__ == "__main__":
    main()
