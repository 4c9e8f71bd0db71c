"""The trainer's output head: logits computed the way the model's own forward computes them
(lm_head bias, logit scale, final softcap, in HF's order), in fp32 or the model dtype; models
whose forward does something the reference cannot mirror are refused by name."""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD_DTYPES = ("float32", "model")  # the lm_head in fp32 (as RL trainers) or the model dtype


class ReferenceError(ValueError):
    """The reference cannot compute logits the way this model does (it refuses, never guesses)."""


# Config attributes whose meaning is the same in every transformers architecture that has them
# (transformers 5.19 modeling_*.py): the softcap of Gemma 2/3, nanochat, VaultGemma (and
# RecurrentGemma's `logits_soft_cap`), cap * tanh(logits / cap); Cohere's `logit_scale` multiplies.
_SOFTCAP_ATTRS = ("final_logit_softcapping", "logits_soft_cap")
_SCALE_ATTRS = {"logit_scale": "mul"}
# `logits_scaling` means different things per architecture: Granite* divides the logits,
# HyperCLOVAX multiplies them, MiniCPM3 divides the hidden state before lm_head. Keyed by
# model_type prefix; any other architecture with it set is refused.
_LOGITS_SCALING = {"granite": "div", "hyperclovax": "mul", "minicpm3": "div_hidden"}
# Names that look like an output-logit modifier (e.g. xLSTM `output_logit_soft_cap`, Falcon-H1
# `lm_head_multiplier`, `logits_mup_width_multiplier`, `output_multiplier`); the excluded
# prefixes act inside attention or the MoE router, which the base model already computes.
_SUSPECT = re.compile(
    r"(logit|lm_head|output).*(scal|cap|mult|temp)"
    r"|(scal|cap|mult|temp).*(logit|lm_head)"
)
_INTERNAL = re.compile(
    r"^(attn|attention|conf_attention|router|moe_router|gate|contrastive)_"
    r"|_init_value$"
)


@dataclass(frozen=True)
class HeadSpec:
    """What a model's forward does after its last hidden state, in HF's order: optionally divide
    the hidden state (`scale_op` "div_hidden"), lm_head (weight, and bias if it has one), then
    multiply ("mul") or divide ("div") the logits by `scale`, then softcap:
    cap * tanh(logits / cap)."""

    architecture: str = ""
    scale: float | None = None
    scale_op: str = "mul"
    softcap: float | None = None


def _arch(config, model=None) -> str:
    archs = getattr(config, "architectures", None) or [type(model).__name__ if model else "?"]
    return f"{archs[0]} (model_type {getattr(config, 'model_type', '?')})"


def head_spec(config) -> HeadSpec:
    """Read a transformers config into a HeadSpec; raises ReferenceError naming the architecture
    and the attribute for a logit-modifying attribute the reference does not know how to mirror."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    attrs = {**config.to_dict(), **text.to_dict()}
    for name in (*_SOFTCAP_ATTRS, *_SCALE_ATTRS, "logits_scaling"):
        # getattr too: some are properties that to_dict() omits (MiniCPM3's logits_scaling).
        attrs[name] = getattr(text, name, attrs.get(name))
    model_type = str(getattr(text, "model_type", None) or getattr(config, "model_type", ""))
    arch = _arch(config)
    scale, op, softcap = None, "mul", None
    for name, value in sorted(attrs.items()):
        if value is None or value is False or isinstance(value, (dict, list, str)):
            continue
        if name in _SOFTCAP_ATTRS:
            if softcap is not None:
                raise ReferenceError(f"{arch}: two final softcaps set ({name})")
            softcap = float(value)
        elif name in _SCALE_ATTRS or name == "logits_scaling":
            how = _SCALE_ATTRS.get(name) or next(
                (o for prefix, o in _LOGITS_SCALING.items() if model_type.startswith(prefix)), None
            )
            if how is None:
                raise ReferenceError(
                    f"{arch}: config.{name}={value!r} means division in Granite and "
                    f"multiplication in HyperCLOVAX; which one {model_type} does is not known"
                )
            if scale is not None:
                raise ReferenceError(f"{arch}: two logit scales set ({name})")
            scale, op = float(value), how
        elif (
            _SUSPECT.search(name)
            and not _INTERNAL.search(name)
            and not (
                # a multiplier/scale/temperature of exactly 1 changes nothing; a cap always does
                value == 1.0 and not isinstance(value, bool) and "cap" not in name
            )
        ):
            raise ReferenceError(
                f"{arch}: config.{name}={value!r} looks like it modifies the output logits, "
                "which the reference cannot mirror; refusing rather than scoring wrong logits"
            )
    return HeadSpec(arch, scale, op, softcap)


def head_logits(
    hidden,
    weight,
    bias,
    spec: HeadSpec,
    head_dtype: str = "float32",
    cast_block: int | None = None,
    tile: int | None = None,
):
    """Logits [..., V] in fp32 from final hidden states [..., H], as the model's forward computes
    them (HeadSpec order: hidden division, lm_head with bias, scale, softcap).

    head_dtype "float32": everything in fp32 (hidden.float() @ W.float().T + b.float(), then
    scale and softcap in fp32), as an RL trainer with an fp32 head does. "model": everything in
    the lm_head weight's dtype, cast to fp32 at the end, which is what HF's forward returns (its
    softcap runs on bf16 logits for a bf16 model) and what vLLM's LogitsProcessor does with a
    bf16 head (note vLLM applies softcap before scale; no architecture here has both).
    `cast_block`: when the weight must be cast (a bf16 weight, fp32 head), cast that many
    vocabulary rows at a time instead of the whole matrix (same values, bounded memory).
    `tile`: multiply the rows of a 2-D `hidden` in tiles of exactly this many rows (the last one
    zero-padded), so a row's logits do not depend on how many rows are scored with it (a GEMM's
    rounding depends on its shape).
    """
    import torch  # lazy: torch takes seconds to import

    if head_dtype not in HEAD_DTYPES:
        raise ValueError(f"head_dtype must be one of {HEAD_DTYPES}, got {head_dtype!r}")
    dtype = weight.dtype if head_dtype == "model" else torch.float32
    h = hidden.to(dtype)
    if spec.scale is not None and spec.scale_op == "div_hidden":
        h = h / spec.scale
    logits = _linear(h, weight, bias, dtype, cast_block, tile)
    if spec.scale is not None and spec.scale_op == "mul":
        logits = logits * spec.scale
    elif spec.scale is not None and spec.scale_op == "div":
        logits = logits / spec.scale
    if spec.softcap is not None:
        # The three steps HF's Gemma2ForCausalLM takes, in its order, so rounding matches.
        logits = (logits / spec.softcap).tanh() * spec.softcap
    return logits.float()


def _linear(h, weight, bias, dtype, cast_block: int | None, tile: int | None):
    import torch.nn.functional as F  # lazy: torch takes seconds to import

    vocab = weight.shape[0]
    step = cast_block if weight.dtype != dtype and cast_block and cast_block < vocab else vocab
    if step == vocab and not tile:
        return F.linear(h, weight.to(dtype), None if bias is None else bias.to(dtype))
    n = h.shape[0]
    out = h.new_empty((*h.shape[:-1], vocab))
    for v in range(0, vocab, step):  # a block of vocabulary rows cast at a time: no full copy
        w = weight[v : v + step].to(dtype)
        b = None if bias is None else bias[v : v + step].to(dtype)
        if not tile:
            out[..., v : v + step] = F.linear(h, w, b)
            continue
        for r in range(0, n, tile):
            x = h[r : r + tile]
            if x.shape[0] < tile:
                x = F.pad(x, (0, 0, 0, tile - x.shape[0]))
            out[r : r + tile, v : v + step] = F.linear(x, w, b)[: min(tile, n - r)]
    return out


@dataclass(frozen=True)
class Head:
    """A loaded model's output head: call it on hidden states to get fp32 logits."""

    weight: object
    bias: object
    spec: HeadSpec
    head_dtype: str
    cast_block: int | None = None  # vocabulary rows cast per step when weight needs a cast
    tile: int | None = None  # rows per GEMM (row results independent of the batch)

    def __call__(self, hidden):
        return head_logits(
            hidden, self.weight, self.bias, self.spec, self.head_dtype, self.cast_block, self.tile
        )


def verify_head(model, spec: HeadSpec, n_tokens: int = 8) -> float:
    """Check that `spec` reproduces the model's own forward: lm_head logits from
    `model.base_model` hidden states must equal `model(ids).logits` on a short probe, computed
    in the model's dtype with the same ops (so the tolerance is ~1 ulp of the largest logit).
    Catches what the config scan cannot see (a forward that scales or caps without a config
    attribute). Returns the max |difference|; raises ReferenceError when it is larger."""
    import torch  # lazy: torch takes seconds to import

    out = model.get_output_embeddings()
    vocab = out.weight.shape[0]
    ids = (torch.arange(n_tokens) * 7919 + 3).remainder(vocab).unsqueeze(0).to(out.weight.device)
    with torch.inference_mode():
        want = model(input_ids=ids).logits.float()
        hidden = model.base_model(input_ids=ids).last_hidden_state
        got = head_logits(hidden, out.weight, getattr(out, "bias", None), spec, "model")
    diff = (got - want).abs().max().item()
    tol = torch.finfo(out.weight.dtype).eps * max(1.0, want.abs().max().item())
    if not diff <= tol:
        raise ReferenceError(
            f"{_arch(model.config, model)}: the model's forward does something to its logits "
            f"that the reference does not mirror ({spec}); max |logit difference| {diff:.3g} > "
            f"{tol:.3g}"
        )
    return diff


def model_head(
    model,
    head_dtype: str = "float32",
    verify: bool = True,
    cast_block: int | None = None,
    tile: int | None = None,
) -> Head:
    """The Head of a loaded HF causal LM: its config read by head_spec (ReferenceError if it
    cannot be mirrored), checked against the model's own forward (verify_head), and the weight
    cast to fp32 once when head_dtype is "float32" -- or, with `cast_block`, kept in the model
    dtype and cast that many vocabulary rows at a time on each call (no fp32 copy of a large
    head held in memory)."""
    spec = head_spec(model.config)
    if verify:
        verify_head(model, spec)
    out = model.get_output_embeddings()
    weight, bias = out.weight.detach(), getattr(out, "bias", None)
    bias = None if bias is None else bias.detach()
    if head_dtype == "float32" and not cast_block:
        weight, bias = weight.float(), None if bias is None else bias.float()
    return Head(weight, bias, spec, head_dtype, cast_block, tile)
