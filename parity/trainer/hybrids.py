"""Which part of a weight update did not land: hybrid hypotheses on the trainer side.

When an engine matches neither the old nor the new weights after an update, some of its
components still compute with the old ones. A hybrid model takes the new checkpoint and puts the
old weights back into a set of components (the input embedding, each decoder layer, the final
norm, the output head); the set whose predictions match the engine's logprobs names what stayed
stale. The search is greedy forward selection over single components (plus "every layer" and
"the whole body" as groups), on a few sequences, confirmed on all of them.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np

HEAD = "lm_head"
MAX_ROUNDS = 3  # components added by the search at most
SEARCH_SEQUENCES = 6  # sequences the search scores each hypothesis on (all of them to confirm)


@dataclass
class Attribution:
    """The search's answer.

    Attributes:
        stale: the components the best hypothesis keeps old (sorted as in the model).
        gap: mean |dlogp| of the engine to that hypothesis, on every sequence.
        fitted: whether that gap is within the tolerance (the engine is explained).
        hypotheses: hypothesis label -> mean |dlogp| on the search sequences.
        n_scored: hypotheses scored.
    """

    stale: list[str]
    gap: float
    fitted: bool
    hypotheses: dict[str, float] = field(default_factory=dict)
    n_scored: int = 0

    def diagnosis(self) -> str | None:
        """stale_lm_head, stale_layers or stale_components (None when nothing fitted)."""
        if not self.fitted or not self.stale:
            return None
        if self.stale == [HEAD]:
            return "stale_lm_head"
        if all(s.startswith("layers.") for s in self.stale):
            return "stale_layers"
        return "stale_components"


def label(stale) -> str:
    """A hypothesis as text: "new weights", or "new weights, old X, Y" (runs of consecutive
    layers as "layers.3-7")."""
    if not stale:
        return "new weights"
    names, out, run = sorted(stale, key=_order), [], []
    for name in names + [""]:
        if name.startswith("layers.") and (not run or int(name[7:]) == run[-1] + 1):
            run.append(int(name[7:]))
            continue
        if run:
            out.append(f"layers.{run[0]}" + (f"-{run[-1]}" if len(run) > 1 else ""))
        run = [int(name[7:])] if name.startswith("layers.") else []
        if name and not run:
            out.append(name)
    return "new weights, old " + ", ".join(out)


def _order(name: str):
    if name.startswith("layers."):
        return (1, int(name.split(".")[1]))
    return ({"embed_tokens": 0, "norm": 2, HEAD: 3}.get(name, 4), 0)


class HybridModel:
    """A copy of the new model's body whose components can be set back to the old weights, and
    the old or new output head."""

    def __init__(self, old_pair, new_pair):
        (old_model, self.old_head), (new_model, self.new_head) = old_pair, new_pair
        self.old_body, self.new_body = old_model.base_model, new_model.base_model
        self.body = copy.deepcopy(self.new_body)
        self.n_layers = len(self.body.layers)
        self.stale: frozenset[str] = frozenset()

    def components(self) -> list[str]:
        """Every component a hypothesis can keep old."""
        return self.names((SimpleNamespace(base_model=self.body), None))

    @staticmethod
    def names(pair) -> list[str]:
        """The components of a (model, head) pair: embeddings, each layer, final norm, head."""
        n_layers = len(pair[0].base_model.layers)
        return ["embed_tokens"] + [f"layers.{i}" for i in range(n_layers)] + ["norm", HEAD]

    def _module(self, body, name: str):
        if name.startswith("layers."):
            return body.layers[int(name.split(".")[1])]
        return getattr(body, name)

    def set(self, stale: frozenset[str]) -> None:
        """Put the old weights into `stale` body components and the new ones elsewhere."""
        for name in (set(stale) ^ set(self.stale)) - {HEAD}:
            src = self.old_body if name in stale else self.new_body
            self._module(self.body, name).load_state_dict(self._module(src, name).state_dict())
        self.stale = frozenset(stale)

    def pair(self):
        """(model-like, head) as SplitScorer scores with."""
        head = self.old_head if HEAD in self.stale else self.new_head
        return SimpleNamespace(base_model=self.body), head

    def shared(self, a: frozenset, b: frozenset) -> list[str]:
        """The body components before the first one that hypotheses a and b set differently:
        both compute them alike."""
        out = []
        for name in self.components():
            if name in a ^ b or name == HEAD:
                break
            out.append(name)
        return out

    @contextmanager
    def recording(self):
        """Yields a tape: each body component's outputs, in call order, while it is open."""
        tape: dict[str, list] = {name: [] for name in self.components() if name != HEAD}
        tape["ids"] = []

        def hook(name):
            def keep(module, args, out):
                if name == "embed_tokens":
                    tape["ids"].append(args[0].clone())
                tape[name].append(out.clone() if hasattr(out, "clone") else out)

            return keep

        handles = [
            self._module(self.body, n).register_forward_hook(hook(n)) for n in tape if n != "ids"
        ]
        try:
            yield tape
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def replaying(self, tape: dict | None, names: list[str]):
        """Components `names` return what they returned on `tape`, call by call, instead of
        computing: for a hypothesis scoring the same sequences as the taped one, with these
        components set alike (see `shared`). A call on other inputs raises."""
        import torch  # lazy: torch takes seconds to import

        modules = [self._module(self.body, n) for n in names] if tape else []
        for name, module in zip(names, modules):
            outputs, ids = iter(tape[name]), iter(tape["ids"])

            def forward(*args, _outputs=outputs, _ids=ids, _name=name, **kwargs):
                if _name == "embed_tokens" and not torch.equal(args[0], next(_ids)):
                    raise RuntimeError("replaying a tape on other inputs")
                return next(_outputs)

            module.forward = forward
        try:
            yield
        finally:
            for module in modules:
                del module.forward


def attribute(
    hybrid: HybridModel,
    predict: Callable[[object, list[int]], list[np.ndarray]],
    engine: list[np.ndarray],
    tol: float,
) -> Attribution:
    """Search the stale components.

    Args:
        hybrid: the hybrid model (its state is restored to all-new afterwards).
        predict: (model-and-head pair, sequence indices) -> the probe's expected logprobs of
            those sequences when the new weights are that pair; the same indices must run the
            same forwards (the components a candidate shares with the chosen hypothesis are
            replayed from a recording of the chosen one, not recomputed).
        engine: the engine's logprobs per sequence.
        tol: mean |dlogp| within which a hypothesis explains the engine.
    """
    search = list(range(min(SEARCH_SEQUENCES, len(engine))))
    scored: dict[frozenset, float] = {}
    predicted: dict[frozenset, dict[int, np.ndarray]] = {}  # each sequence scored once

    def gap(stale: frozenset, idx: list[int]) -> float:
        have = predicted.setdefault(stale, {})
        todo = [i for i in idx if i not in have]
        if todo:
            hybrid.set(stale)
            have.update(zip(todo, predict(hybrid.pair(), todo)))
        pred = [have[i] for i in idx]
        diffs = [np.abs(np.asarray(engine[i], dtype=np.float64) - p) for i, p in zip(idx, pred)]
        flat = np.concatenate(diffs) if diffs else np.zeros(0)
        return float(flat.mean()) if len(flat) else float("nan")

    # The body components a candidate shares with the chosen hypothesis (those before the
    # one it adds) are replayed from a tape of the chosen one on the search sequences.
    taped: dict = {"stale": frozenset(), "tape": None}

    def fit(stale: frozenset) -> float:
        if stale not in scored:
            with hybrid.replaying(taped["tape"], hybrid.shared(stale, taped["stale"])):
                scored[stale] = gap(stale, search)
        return scored[stale]

    def tape(stale: frozenset) -> None:
        hybrid.set(stale)
        with hybrid.recording() as out:
            predict(hybrid.pair(), search)
        taped.update(stale=stale, tape=out)

    parts = hybrid.components()
    layers = frozenset(p for p in parts if p.startswith("layers."))
    chosen = frozenset()
    try:
        with hybrid.recording() as first:
            best = fit(chosen)
        taped.update(tape=first)
        for rnd in range(MAX_ROUNDS):
            if rnd:
                tape(chosen)
            candidates = [chosen | {p} for p in parts if p not in chosen]
            if rnd == 0:
                candidates += [layers, frozenset(parts) - {HEAD}]
            g, pick = min((fit(c), sorted(c)) for c in candidates)
            if not g < 0.5 * best:  # no component explains a real share of the gap
                break
            chosen, best = frozenset(pick), g
            if best <= tol:
                break
        final = gap(chosen, list(range(len(engine))))
    finally:
        hybrid.set(frozenset())
    return Attribution(
        sorted(chosen, key=_order),
        final,
        bool(final <= tol),
        {label(k): v for k, v in sorted(scored.items(), key=lambda kv: kv[1])},
        len(scored),
    )


def singles(
    hybrid: HybridModel, predict: Callable[[object, list[int]], list[np.ndarray]], n: int
) -> dict[str, list[np.ndarray]]:
    """Every single-component hypothesis (that component old, the rest new) predicted on all n
    sequences (`predict` as in `attribute`); the components before the old one are replayed
    from a recording of the all-new prediction, not recomputed."""
    idx = list(range(n))
    out: dict[str, list[np.ndarray]] = {}
    try:
        hybrid.set(frozenset())
        with hybrid.recording() as tape:
            predict(hybrid.pair(), idx)
        for name in hybrid.components():
            stale = frozenset({name})
            hybrid.set(stale)
            with hybrid.replaying(tape, hybrid.shared(stale, frozenset())):
                out[name] = predict(hybrid.pair(), idx)
    finally:
        hybrid.set(frozenset())
    return out


FIXES = {
    "stale_lm_head": "the output head kept the old weights (a tied head the reload did not "
    "re-process): set PARITY_RELOAD_REPROCESS=1 on the engine (re-processes "
    "the modules the reload skipped), or push the tied head as lm_head.weight",
    "stale_layers": "these decoder layers kept the old weights: check that the pushed "
    "checkpoint has their tensors under the names the engine loads",
    "stale_components": "these components kept the old weights: re-process them after the "
    "reload (PARITY_RELOAD_REPROCESS=1) or push them explicitly",
}


class Predictor:
    """A probe's prediction that scores many sequences at once: `many(pair, idx)` -> the
    expected logprobs of sequences idx with `pair` as the new weights; called as
    `(pair, i)`, one sequence (the form `explain` also takes)."""

    def __init__(self, many: Callable[[object, list[int]], list[np.ndarray]]):
        self.many = many

    def __call__(self, pair, i: int) -> np.ndarray:
        return self.many(pair, [i])[0]


def explain(
    scorer, predict_one: Callable[[object, int], np.ndarray], engine: list[np.ndarray], tol: float
) -> Attribution:
    """Attribute an update that matches neither checkpoint: `predict_one(pair, i)` is the
    probe's expected logprobs of sequence i with `pair` as the new weights (a Predictor: each
    hypothesis scores its sequences in one batched call), `engine` the engine's logprobs of
    those sequences (scorer: parity.trainer.updates.SplitScorer)."""
    old_pair, new_pair = scorer.pairs()
    hybrid = HybridModel(old_pair, new_pair)
    many = getattr(predict_one, "many", None) or (
        lambda pair, idx: [predict_one(pair, i) for i in idx]
    )
    return attribute(hybrid, many, engine, tol)


def summary(att: Attribution, top: int = 100) -> dict:
    """The attribution for report.json: stale components, gap, and the hypotheses scored
    (closest first)."""
    return {
        "stale": att.stale,
        "gap": att.gap,
        "fitted": att.fitted,
        "diagnosis": att.diagnosis(),
        "n_hypotheses": att.n_scored,
        "closest": dict(list(att.hypotheses.items())[:top]),
    }


def message(att: Attribution, tol: float) -> str:
    """One sentence: what stayed stale (or that no hypothesis explains the engine)."""
    if att.fitted and att.stale:
        return (
            f"the engine matches the {label(att.stale)} (mean |dlogp| {att.gap:.3g} <= "
            f"{tol:g}; {att.n_scored} hypotheses scored): {FIXES[att.diagnosis()]}"
        )
    best = next(iter(att.hypotheses.items()), ("none", float("nan")))
    return (
        f"not attributed: no hybrid of old and new components explains the engine (closest "
        f"{best[0]}, mean |dlogp| {best[1]:.3g}; {att.n_scored} hypotheses scored)"
    )
