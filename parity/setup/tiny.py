"""The built-in tiny model: a byte-level BPE tokenizer and a 2-layer Llama trained for a few
seconds on a synthetic corpus (templated English and small sums), its head untied or tied."""

from __future__ import annotations

import random
from pathlib import Path

from parity.setup.modelbuild import Log, offline, write_portable

_TINY_SEED = 0
_TINY_VOCAB = 768

_SUBJECTS = (
    "the cat",
    "a dog",
    "the model",
    "my friend",
    "the engine",
    "a student",
    "the teacher",
    "our team",
    "the river",
    "a small bird",
)
_VERBS = (
    "sees",
    "likes",
    "builds",
    "finds",
    "reads",
    "writes",
    "follows",
    "carries",
    "watches",
    "helps",
)
_OBJECTS = (
    "a red ball",
    "the old book",
    "a long road",
    "the bright sun",
    "a quiet room",
    "the green tree",
    "a new idea",
    "the last train",
    "a warm cup of tea",
    "the open door",
)
_ADVERBS = (
    "today",
    "every morning",
    "at night",
    "slowly",
    "with care",
    "again",
    "in the park",
    "near the sea",
)


def _tiny_corpus(seed: int, docs: int) -> list[str]:
    """Documents of 1-4 sentences: templated English and small arithmetic ("12 + 7 = 19.")."""
    rng = random.Random(seed)

    def sentence() -> str:
        if rng.random() < 0.45:
            a, b, op = rng.randint(0, 50), rng.randint(0, 50), rng.choice("+-*")
            result = a + b if op == "+" else a - b if op == "-" else a * b
            return f"{a} {op} {b} = {result}."
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        if rng.random() < 0.5:
            text += " " + rng.choice(_ADVERBS)
        return text[0].upper() + text[1:] + "."

    return [" ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(docs)]


def build_tiny_tied(out: Path, log: Log = print) -> None:
    """The tiny model with its lm_head tied to the input embedding (as SmolLM2, Llama-3.2-1B and
    Qwen2.5-0.5B are): the checkpoint has no lm_head.weight."""
    build_tiny(out, log, tied=True)


def build_tiny(out: Path, log: Log = print, tied: bool = False) -> None:
    """Train a byte-level BPE tokenizer and a 2-layer Llama (untied head unless `tied`, GQA) for
    a few seconds.

    Random init gives near-uniform next-token distributions (entropy ~ log V). A short training
    run on the synthetic corpus makes them peaked where the text is predictable (template words,
    sums) and broad where it is not (which subject, which operands): ~1.5-2 nats on average.
    """
    offline()
    import torch  # lazy: torch takes seconds to import
    from tokenizers import (  # lazy: tokenizers, only when a model is built
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy: transformers imports torch

    corpus = _tiny_corpus(_TINY_SEED, 4000)
    special = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=_TINY_VOCAB,
            special_tokens=list(special.values()),
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    # Every encoded text starts with <s>, in both transformers versions (no add_bos_token logic).
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )

    # head_dim = 128 / 4 = 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... only.
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=tok.token_to_id("<pad>"),
    )
    stream = [i for doc in corpus for i in [*tok.encode(doc).ids, eos]]
    data = torch.tensor(stream)
    steps, batch, length = 150, 16, 64
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(_TINY_SEED)
        model = LlamaForCausalLM(config)
        gen = torch.Generator().manual_seed(_TINY_SEED)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / steps)
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - length, (batch,), generator=gen)
            x = torch.stack([data[s : s + length] for s in starts.tolist()])
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    model = model.eval().to(torch.bfloat16)
    write_portable(out, model, tok, special, None, config.max_position_embeddings)
