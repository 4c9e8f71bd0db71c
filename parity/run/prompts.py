"""Prompt sources for scenarios (inline lists and generators such as "arithmetic:N"), their
rendering into token ids with the model's own tokenizer, and rewards on the completions."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Prompt:
    """One prompt: the user text and, for generated tasks, the expected answer."""

    text: str
    answer: str | None = None


def arithmetic(n: int, seed: int = 0) -> list[Prompt]:
    """`n` addition/subtraction questions with small operands, deterministic for a seed.

    Small operands keep them within reach of a 135M model, so the exact-match reward is
    partly right: a reward that is always 0 or always 1 cannot show a regression.
    """
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if rng.random() < 0.5:
            prompts.append(Prompt(f"What is {a} + {b}?", str(a + b)))
        else:
            a, b = max(a, b), min(a, b)
            prompts.append(Prompt(f"What is {a} - {b}?", str(a - b)))
    return prompts


def shared_prefix(n: int, seed: int = 0) -> list[Prompt]:
    """`n` prompts sharing a long common prefix (for prefix-cache probes)."""
    prefix = (
        "You are a careful assistant. Read the question, think about the numbers involved, "
        "and answer with a short sentence that states the result clearly. "
    )
    return [Prompt(prefix + p.text, p.answer) for p in arithmetic(n, seed)]


GENERATORS: dict[str, Callable[[int, int], list[Prompt]]] = {
    "arithmetic": arithmetic,
    "shared-prefix": shared_prefix,
}


MAX_PROMPTS = 100_000


def parse_source(source: str) -> tuple[str, int]:
    """Split "name:N" into (name, N); raises ValueError with the accepted forms."""
    m = re.fullmatch(r"([a-z-]+):(\d+)", source.strip())
    if not m or m.group(1) not in GENERATORS:
        raise ValueError(
            f"unknown prompt source {source!r}; use one of "
            + ", ".join(f"'{g}:N'" for g in GENERATORS)
        )
    n = int(m.group(2))
    if not 1 <= n <= MAX_PROMPTS:
        raise ValueError(f"prompt source {source!r} must ask for 1 to {MAX_PROMPTS} prompts")
    return m.group(1), n


def load_prompts(source: str | None, items: list[str] | None, seed: int) -> list[Prompt]:
    """Prompts from a generator source or an inline list of strings."""
    if items:
        return [Prompt(t) for t in items]
    name, n = parse_source(source or "")
    return GENERATORS[name](n, seed)


def render(tokenizer, prompts: list[Prompt], chat: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt, rendered once in the harness so every engine gets identical
    input: through the chat template when the tokenizer has one (or `chat` says so)."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    out = []
    for p in prompts:
        if use_chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": p.text}], add_generation_prompt=True, tokenize=True
            )
            if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tokenizer(p.text)["input_ids"]
        out.append([int(t) for t in ids])
    return out


def exact_match_reward(prompt: Prompt, completion: str) -> float | None:
    """1.0 when the last integer in the completion equals the expected answer, else 0.0;
    None when the prompt has no expected answer."""
    if prompt.answer is None:
        return None
    numbers = re.findall(r"-?\d+", completion)
    return 1.0 if numbers and numbers[-1] == prompt.answer else 0.0


REWARDS: dict[str, Callable[[Prompt, str], float | None]] = {
    "exact_match": exact_match_reward,
}
