"""The nopause probe's labels from what V1's workers held at each push
(parity.engines.vllm_nopause), without an engine."""

from __future__ import annotations

from parity.engines.vllm_nopause import bucket_tensors, engine_labels, own_id, states_from_pushes


def test_internal_request_ids_map_to_parity_ids():
    ids = {"parity-nopause-0-3", "parity-nopause-0-31"}
    assert own_id("parity-nopause-0-3-1a2b3c4d", ids) == "parity-nopause-0-3"
    assert own_id("parity-nopause-0-31-1a2b3c4d", ids) == "parity-nopause-0-31"
    assert own_id("parity-nopause-0-3", ids) == "parity-nopause-0-3"
    assert own_id("someone-else-1a2b3c4d", ids) is None


def test_states_follow_the_tokens_each_request_had_when_a_bucket_landed():
    # Bucket 1 landed after 8 tokens of request a, bucket 2 one step later (9), bucket 3 after
    # the engine core ran 3 steps ahead (12).
    pushes = [
        {"at": {"a": 8}, "started": ["a"]},
        {"at": {"a": 9}, "started": ["a"]},
        {"at": {"a": 12}, "started": ["a"]},
    ]
    assert states_from_pushes(14, pushes, "a") == [0] * 8 + [1] + [2] * 3 + [3] * 2


def test_a_request_the_workers_did_not_hold_had_finished_or_not_started():
    # "late" was added after bucket 1 and first held at bucket 2 (2 tokens sampled by then);
    # "done" had finished before bucket 2.
    pushes = [
        {"at": {"done": 5}, "started": ["done"]},
        {"at": {"late": 2}, "started": ["done"]},
    ]
    assert states_from_pushes(4, pushes, "late") == [1, 1, 2, 2]
    assert states_from_pushes(6, pushes, "done") == [0] * 5 + [1]


def test_buckets_take_tensors_by_name_prefix(tmp_path):
    import torch
    from safetensors.torch import save_file

    names = ["model.layers.1.mlp.w", "model.layers.10.mlp.w", "model.norm.weight"]
    save_file(
        {n: torch.full((2,), float(i)) for i, n in enumerate(names)}, tmp_path / "m.safetensors"
    )
    ((name, value),) = bucket_tensors(str(tmp_path), ["model.layers.1."])
    assert name == "model.layers.1.mlp.w" and value.tolist() == [0.0, 0.0]


def test_engine_labels_against_the_states():
    seqs = [
        {"weight_versions": [0, 1, 2], "engine_states": [0, 0, 2]},
        {"weight_versions": [0, 0], "engine_states": None},
    ]
    assert engine_labels(seqs) == {"agree": 2, "differ": 1, "absent": 2}
