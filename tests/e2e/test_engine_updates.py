"""The real-engine tests of test_updates.py's subject (Weight updates: the trainer's keep/recompute scoring against an independent step-by-step)."""

import json

import pytest


@pytest.fixture(scope="session")
def update_run(tmp_path_factory):
    """Every shipped update scenario, once, on the tied tiny model (tied like SmolLM2, the
    default: the V1 reload bug shows on tied heads): three V1 engines (prefix caching on with
    and without the reload workaround, off) and one V0 engine, each serving all the scenarios
    of its setting in turn."""
    from conftest import SCENARIOS, run_cli

    from parity.setup.models import build_model

    build_model("tiny-tied", log=lambda m: None)

    out = tmp_path_factory.mktemp("updates")
    files = sorted(str(f) for f in SCENARIOS.glob("update-*.toml"))
    # Modes wait and abort, on the same engines (no extra start): test-only scenarios.
    extra = tmp_path_factory.mktemp("update-modes")
    for engine in ("v1", "v0"):
        text = (SCENARIOS / f"update-inflight-{engine}.toml").read_text()
        for mode in ("wait", "abort"):
            f = extra / f"update-inflight-{engine}-{mode}.toml"
            f.write_text(
                text.replace(
                    f'name = "update-inflight-{engine}"',
                    f'name = "update-inflight-{engine}-{mode}"\nmin_tokens = 100',
                ).replace('mode = "keep"', f'mode = "{mode}"')
            )
            files.append(str(f))
    result = run_cli(["check", *files, "--model", "tiny-tied", "--output", str(out)])
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.exists() else None
    assert report is not None, result.output
    return result, out, {s["name"]: s for s in report["scenarios"]}, report


def _patches(update_run, name):
    """parity's worker patches in the effective config of the engine that ran scenario `name`."""
    report = update_run[3]
    (engine,) = [e for e in report["engines"] if name in e["scenarios"]]
    return engine["effective_config"]["patches"]


def _verdict(scenarios, name):
    return scenarios[name]["verdict"]


def test_every_update_scenario_as_expected(update_run):
    result, out, scenarios, report = update_run
    assert result.exit_code == 0, result.output
    assert all(s["as_expected"] for s in scenarios.values())
    assert len(report["engines"]) == 4  # V1 cache on +/- workaround, V1 cache off, V0
    from parity.engines.process import _live

    assert not _live  # every engine worker was stopped


@pytest.mark.parametrize("name", ["update-takes-effect", "update-takes-effect-v0"])
def test_update_through_reload_takes_effect(update_run, name):
    _, _, scenarios, _ = update_run
    v, m = _verdict(scenarios, name), scenarios[name]["metrics"]
    assert v["outcome"] == "pass"
    # New requests follow the new weights, far from the old ones.
    assert m["abs_dlogp_after_vs_new"] < 0.01 < 1.0 < m["abs_dlogp_after_vs_old"]
    assert m["update"]["version_after"] == m["update"]["version_before"] + 1
    assert m["update"]["latency_s"] > 0


def test_reload_bug_on_tied_head_is_attributed_to_the_head(update_run):
    """V1 0.32 reload_weights on a tied model: the engine matches the new weights with the old
    head (hybrid search), the worker's own evidence shows the head's compute stale, and the same
    scenario with the workaround passes with the head re-processed."""
    _, _, scenarios, _ = update_run
    sc = scenarios["update-reload-v1-stale-head"]
    v, m = sc["verdict"], sc["metrics"]
    assert (v["outcome"], v["diagnosis"]) == ("fail", "stale_lm_head")
    assert m["attribution"]["stale"] == ["lm_head"] and m["attribution"]["gap"] < 0.01
    assert m["attribution"]["closest"]["new weights"] > 0.05
    assert "PARITY_RELOAD_REPROCESS=1" in v["message"]
    finding = next(f for f in v["findings"] if f["name"] == "stale_components")
    assert finding["outcome"] == "fail" and finding["value"] == 1
    # The worker's own evidence: the head's parameter holds the new (tied) embedding, its
    # kernel computes from the pre-packed old one; every other module reached the checkpoint.
    ev = m["worker_evidence"]["evidence"]
    assert ev["compute_stale"] == ["lm_head"] and not ev["param_stale"], ev
    err = ev["max_rel_err"]["lm_head"]
    assert err["param_vs_ckpt"] < 1e-4 < 0.1 < err["engine_vs_ckpt"]
    assert ev["modules_checked"] == ev["ok"] + 1 and ev["ok"] >= 2 * 4 + 1
    assert _patches(update_run, "update-reload-v1-stale-head")["reload_reprocess"] is False


def test_reload_workaround_reprocesses_the_head_on_every_reload(update_run):
    """PARITY_RELOAD_REPROCESS=1: every reload of the scenarios that carry it re-packed the
    head, and the evidence after the fix is clean (several reloads on one engine)."""
    _, _, scenarios, _ = update_run
    names = [
        "update-takes-effect",
        "update-stale-layer-control",
        "update-stale-cache-off",
        "update-inflight-v1",
    ]
    for name in names:
        sc = scenarios[name]
        we = sc["metrics"]["worker_evidence"]
        assert _patches(update_run, name)["reload_reprocess"] is True
        assert we["reprocessed"] == ["lm_head"], (name, we)
        ev = we["evidence"]
        assert not (ev["compute_stale"] or ev["param_stale"] or ev["no_checkpoint_value"]), ev
    assert scenarios["update-takes-effect"]["verdict"]["outcome"] == "pass"


def test_stale_layer_control_names_its_layer(update_run):
    _, _, scenarios, _ = update_run
    sc = scenarios["update-stale-layer-control"]
    assert (sc["verdict"]["outcome"], sc["verdict"]["diagnosis"]) == ("fail", "stale_layers")
    assert sc["metrics"]["attribution"]["stale"] == ["layers.1"]
    assert "layers.1" in sc["verdict"]["message"]


def test_inplace_update_fails_as_no_effect(update_run):
    _, _, scenarios, _ = update_run
    v, m = (
        _verdict(scenarios, "update-inplace-control"),
        scenarios["update-inplace-control"]["metrics"],
    )
    assert (v["outcome"], v["diagnosis"]) == ("fail", "no_effect")
    assert "reload_weights" in v["message"]
    # The engine emptied the linear weights at load: the in-place copy could not reach them,
    # and the worker's evidence sees their kernels still on the old weights.
    assert any("qkv_proj" in name for name, _ in m["inplace_skipped"])
    ev = m["worker_evidence"]["evidence"]
    assert len(ev["param_stale"]) == 2 * 4 and all(
        ev["max_rel_err"][n]["param_vs_ckpt"] is None for n in ev["param_stale"]
    )


def test_stale_prefix_cache_control_and_fix(update_run):
    _, _, scenarios, _ = update_run
    v = _verdict(scenarios, "update-stale-cache-control")
    m = scenarios["update-stale-cache-control"]["metrics"]
    assert (v["outcome"], v["diagnosis"]) == ("fail", "stale_prefix_cache")
    assert "disable prefix caching or reset it" in v["message"]
    # The engine served the old weights' prompt KV exactly where the block arithmetic says.
    assert m["abs_dlogp_after_vs_stale"] < 0.01 < m["abs_dlogp_after_vs_new"]
    assert m["cached_tokens_engine"] == m["cached_tokens_hypothesis"]
    off = scenarios["update-stale-cache-off"]
    assert off["verdict"]["outcome"] == "pass"
    assert off["metrics"]["prefix_caching"] is False
    assert set(off["metrics"]["cached_tokens_engine"]) == {0}


@pytest.mark.parametrize(
    "name,impl", [("update-inflight-v1", "vllm.v1."), ("update-inflight-v0", "vllm.engine.")]
)
def test_inflight_update_keeps_kv_on_both_engines(update_run, name, impl):
    _, _, scenarios, _ = update_run
    sc = scenarios[name]
    v, m = sc["verdict"], sc["metrics"]
    assert sc["engines"]["candidate"]["engine_impl"].startswith(impl)
    assert v["outcome"] == "pass" and m["semantics"] == "keep"
    assert "KEEP semantics" in v["message"] and "update latency" in v["message"]
    assert m["n_pre_tokens"] > 0 and m["n_post_tokens"] > 0
    assert m["abs_dlogp_post_vs_keep"] < 0.01 < 0.1 < m["abs_dlogp_post_vs_recompute"]
    # Every request had sampled after_tokens when the update was asked for. V0 blocks at the
    # request: no token after it comes from the old weights. V1's engine core runs ahead of the
    # client by as many steps as the client has not read yet, so some do: one or two on a quiet
    # machine, three seen on a loaded 2-core one (a CI rehearsal beside other engine runs). The
    # bound is structural, not a timing: fewer than the tokens each request had left to sample.
    assert all(s >= 8 for s in m["seen_at_request"])
    lag, left = (
        m["update"]["lag_tokens_max"],
        sc["sampling"]["max_tokens"] - max(m["seen_at_request"]),
    )
    assert lag == 0 if "v0" in name else 0 <= lag < left
    assert m["update"]["latency_s"] < 5


def test_cache_reset_in_flight_is_recompute_semantics(update_run):
    _, _, scenarios, _ = update_run
    sc = scenarios["update-inflight-v1-recompute"]
    assert (sc["verdict"]["outcome"], sc["verdict"]["diagnosis"]) == ("fail", "semantics_mismatch")
    assert sc["metrics"]["semantics"] == "recompute"
    assert sc["metrics"]["abs_dlogp_post_vs_recompute"] < 0.01


@pytest.mark.parametrize("engine", ["v1", "v0"])
def test_wait_finishes_and_abort_stops_inflight_requests_under_the_old_weights(update_run, engine):
    _, _, scenarios, _ = update_run
    wait = scenarios[f"update-inflight-{engine}-wait"]
    abort = scenarios[f"update-inflight-{engine}-abort"]
    for sc in (wait, abort):
        assert sc["verdict"]["outcome"] == "pass", sc["verdict"]["message"]
        assert sc["metrics"]["n_post_tokens"] == 0 and sc["metrics"]["semantics"] == "n/a"
    # wait: every request ran to max_tokens under the old weights; abort: stopped at the update.
    assert set(wait["metrics"]["tokens_before_update"]) == {32}
    # V0 stops exactly at the step boundary; V1's engine core runs ahead of the client by a
    # few steps (how many depends on timing; 11 was seen under load).
    overrun = 0 if engine == "v0" else 4
    assert all(8 <= k <= 8 + overrun for k in abort["metrics"]["tokens_before_update"])
    assert wait["metrics"]["update"]["lag_tokens_mean"] > 20


def test_step_size_updates_decide(update_run):
    """The update-step-* scenarios: a training step (old -> new ~0.0085 on tiny-tied) judged at
    the fp32 tolerance and by the paired screen takes effect, and its stale-cache, stale-layer
    and stale-head controls fail naming the cause, though a stale layer 1 (~0.003) or head
    (~0.0006) moves logprobs less than the tolerance (docs/measurements.md#rl-step-size,
    #paired-share)."""
    _, _, scenarios, _ = update_run
    ok = scenarios["update-step-takes-effect"]
    assert ok["verdict"]["outcome"] == "pass" and ok["metrics"]["tolerance"] == 0.004
    assert ok["metrics"]["abs_dlogp_after_vs_old"] < 0.1  # a step, not a perturbation
    cache = _verdict(scenarios, "update-step-stale-cache-control")
    assert (cache["outcome"], cache["diagnosis"]) == ("fail", "stale_prefix_cache")
    layer = scenarios["update-step-stale-layer-control"]
    assert layer["verdict"]["diagnosis"] == "stale_layers"
    assert layer["metrics"]["attribution"]["stale"] == ["layers.1"]
    head = _verdict(scenarios, "update-step-stale-head-control")
    assert (head["outcome"], head["diagnosis"]) == ("fail", "stale_lm_head")


@pytest.mark.parametrize("name", ["update-step-tensors", "update-step-tensors-v0"])
def test_in_memory_tensors_take_effect(update_run, name):
    """via = "tensors" (the trainer's tensors into load_weights, bucket by bucket; V1 within the
    layer-wise reload) at step size, on the engines the reload scenarios use (no extra start):
    the samples follow the new weights and every module computes them
    (docs/measurements.md#tensors-update)."""
    _, _, scenarios, _ = update_run
    sc = scenarios[name]
    m = sc["metrics"]
    assert sc["verdict"]["outcome"] == "pass" and m["tolerance"] == 0.004
    assert m["abs_dlogp_after_vs_new"] < 1e-4 < 0.01 < m["abs_dlogp_after_vs_old"]
    buckets = m["update"]["buckets"]
    assert buckets and all(b["tensors"] > 0 and b["load_s"] >= 0 for b in buckets)
    evidence = m["worker_evidence"]["evidence"]
    assert evidence["ok"] == evidence["modules_checked"] > 0


def test_nopause_update_mixes_weights_on_v1_and_v0_and_not_with_a_pause(update_run):
    """The nopause scenarios (docs/weight-updates.md#updating-without-a-pause): V1 samples from
    hybrid weights between its buckets, V0 never does but keeps its in-flight requests on old
    KV; both fail mixed_weights; with a pause in wait mode nothing is mixed. Every token matches
    the trainer's replay of its labelled weights."""
    _, _, scenarios, _ = update_run
    v1, v0 = scenarios["update-nopause-v1"], scenarios["update-nopause-v0"]
    wait = scenarios["update-nopause-v1-wait"]
    for sc in (v1, v0):
        assert sc["verdict"]["diagnosis"] == "mixed_weights", sc["verdict"]["message"]
        assert sc["metrics"]["mixing"]["mixed"] > 0
        assert sc["key_metric"].startswith(f"{sc['metrics']['mixing']['mixed']} of 768 tokens")
    assert v1["metrics"]["mixing"]["by_kind"]["hybrid"] > 0
    assert v0["metrics"]["mixing"]["by_kind"]["hybrid"] == 0
    assert v0["metrics"]["mixing"]["by_kind"]["new_on_old_kv"] > 0
    assert wait["verdict"]["outcome"] == "pass" and wait["metrics"]["mixing"]["mixed"] == 0
    for sc in (v1, v0, wait):
        assert sc["metrics"]["gaps"]["all_vs_labels"] < 1e-4, sc["metrics"]["gaps"]
