"""The reference computes logits the way each model's own forward does (lm_head bias, logit
scale, final softcap), and refuses by name what it cannot mirror. Tiny random models are built
offline from transformers configs; the lm_head is scaled up so the distributions are peaked and
a missed softcap or scale changes the logprobs a lot."""

import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.trainer.heads import (
    HeadSpec,
    ReferenceError,
    head_logits,
    head_spec,
    model_head,
    verify_head,
)
from parity.trainer.reference import Reference
from parity.trainer.sampler import process_logits

DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
)
PAIRS = [([1, 5, 9, 14], [20, 33, 47, 2, 101]), ([7, 3], [64, 65, 66]), ([12] * 9, [0, 127])]


def _config(kind: str, **extra):
    import transformers as T

    make = {
        "llama": lambda: T.LlamaConfig(**DIMS),
        "gemma2": lambda: T.Gemma2Config(**DIMS, head_dim=16, final_logit_softcapping=5.0),
        "cohere": lambda: T.CohereConfig(**DIMS, logit_scale=0.25),
        "granite": lambda: T.GraniteConfig(**DIMS, logits_scaling=4.0),
        "hyperclovax": lambda: T.HyperCLOVAXConfig(**DIMS, logits_scaling=0.5),
        "phi": lambda: T.PhiConfig(**DIMS),  # lm_head has a bias
        "minicpm3": lambda: T.MiniCPM3Config(  # hidden / (hidden_size / dim_model_base)
            **{**DIMS, "num_key_value_heads": 4},
            dim_model_base=16,
            q_lora_rank=32,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=8,
            v_head_dim=16,
        ),
    }
    config = make[kind]()
    for name, value in extra.items():
        setattr(config, name, value)
    return config


def _build(config, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(30)
        if getattr(head, "bias", None) is not None:
            head.bias.copy_(torch.randn_like(head.bias) * 3)
    return model


def _save(tmp_path_factory, kind: str, **extra):
    path = tmp_path_factory.mktemp(kind)
    model = _build(_config(kind, **extra))
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path)
    return path, model


def _hf_logprobs(model, pairs, sampling=None):
    """Teacher-forced logprobs of the completion tokens from the model's own forward."""
    out = []
    for prompt, tokens in pairs:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
        rows = logits[len(prompt) - 1 : len(prompt) + len(tokens) - 1]
        if sampling is not None:
            rows = process_logits(rows, sampling)
        out.append(rows.log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1))
    return out


def _greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


KINDS = ["llama", "gemma2", "cohere", "granite", "hyperclovax", "phi", "minicpm3"]


@pytest.mark.parametrize("kind", KINDS)
def test_reference_logprobs_equal_the_models_own(kind, tmp_path_factory):
    path, model = _save(tmp_path_factory, kind)
    ref = Reference(path, "float32", model_fp=None)
    raw = ref.score(PAIRS, SamplingSpec(temperature=1.0))
    for got, want in zip(raw, _hf_logprobs(model, PAIRS)):
        assert abs(got.raw_logprob - want.double().numpy()).max() <= 1e-5
    # Processed: greedy continuations (kept by top-k/top-p) then the arbitrary tokens (mostly
    # excluded on these peaked distributions), so both finite and -inf entries are compared.
    pairs = [(prompt, _greedy(model, prompt, 4) + tokens) for prompt, tokens in PAIRS]
    s = SamplingSpec(temperature=0.7, top_k=20, top_p=0.9)
    for got, want in zip(ref.score(pairs, s), _hf_logprobs(model, pairs, s)):
        want = want.double().numpy()
        assert ((got.processed_logprob == -float("inf")) == (want == -float("inf"))).all()
        finite = want > -float("inf")
        assert finite[:4].all()
        assert abs(got.processed_logprob[finite] - want[finite]).max() <= 1e-5
    assert ref.head.spec == head_spec(model.config)


def test_specs_read_from_configs():
    assert head_spec(_config("llama")) == HeadSpec("? (model_type llama)")
    assert head_spec(_config("gemma2")).softcap == 5.0
    assert (head_spec(_config("cohere")).scale, head_spec(_config("cohere")).scale_op) == (
        0.25,
        "mul",
    )
    assert (head_spec(_config("granite")).scale, head_spec(_config("granite")).scale_op) == (
        4.0,
        "div",
    )
    assert head_spec(_config("hyperclovax")).scale_op == "mul"
    assert head_spec(_config("minicpm3")).scale == 4.0  # a property, absent from to_dict()
    assert head_spec(_config("llama", lm_head_multiplier=1.0)).scale is None  # identity: fine


def test_without_softcap_the_logprobs_differ_a_lot():
    """Negative control: the softcap matters on this model, and the load-time probe sees it."""
    model = _build(_config("gemma2"))
    ids = torch.tensor([[1, 5, 9, 14, 20, 33]])
    with torch.no_grad():
        want = model(input_ids=ids).logits.float().log_softmax(-1)
        hidden = model.base_model(input_ids=ids).last_hidden_state
    w = model.get_output_embeddings().weight
    plain = head_logits(hidden, w, None, HeadSpec(), "float32").log_softmax(-1)
    capped = head_logits(hidden, w, None, head_spec(model.config), "float32").log_softmax(-1)
    assert (plain - want).abs().max() > 1.0
    assert (capped - want).abs().max() <= 1e-5
    with pytest.raises(ReferenceError, match="Gemma2ForCausalLM"):
        verify_head(model, HeadSpec())


def test_model_dtype_head_mirrors_bf16_forward():
    """head_dtype "model": the same ops in bf16 as HF's forward (softcap on bf16 logits)."""
    model = _build(_config("gemma2"), dtype=torch.bfloat16)
    assert verify_head(model, head_spec(model.config)) == 0.0
    with pytest.raises(ReferenceError):
        verify_head(model, HeadSpec())
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        want = model(input_ids=ids).logits.float()
        got = model_head(model, "model")(model.base_model(input_ids=ids).last_hidden_state)
        fp32 = model_head(model, "float32")(model.base_model(input_ids=ids).last_hidden_state)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert 0 < (fp32 - want).abs().max() < 0.1  # the fp32 head differs by bf16 rounding only


@pytest.mark.parametrize(
    "extra, name",
    [
        ({"output_logit_soft_cap": 30.0}, "output_logit_soft_cap"),
        ({"lm_head_multiplier": 2.0}, "lm_head_multiplier"),
        ({"logits_mup_width_multiplier": 8.0}, "logits_mup_width_multiplier"),
        ({"logits_scaling": 2.0}, "logits_scaling"),  # divides in Granite, multiplies elsewhere
    ],
)
def test_unknown_logit_modifier_is_refused_by_name(extra, name):
    with pytest.raises(ReferenceError, match=name) as err:
        head_spec(_config("llama", **extra))
    assert "llama" in str(err.value)


def test_refused_at_load_time(tmp_path_factory):
    path, _ = _save(tmp_path_factory, "llama", output_logit_soft_cap=30.0)
    ref = Reference(path, "float32", model_fp=None)
    with pytest.raises(ReferenceError, match="LlamaForCausalLM.*output_logit_soft_cap"):
        ref.score(PAIRS[:1], SamplingSpec())


def test_config_value_the_forward_ignores_is_caught_by_the_probe():
    """A Llama config carrying Cohere's `logit_scale`: the spec applies it, Llama's forward does
    not, and the load-time comparison with the model's own logits refuses."""
    model = _build(_config("llama", logit_scale=0.5))
    with pytest.raises(ReferenceError, match="does not mirror"):
        model_head(model)
    assert model_head(model, verify=False).spec.scale == 0.5


def test_attention_softcap_is_not_an_output_modifier():
    assert head_spec(_config("gemma2", attn_logit_softcapping=50.0)).softcap == 5.0
