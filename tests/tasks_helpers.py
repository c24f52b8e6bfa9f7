"""A small GPT-2 tokenizer (byte-level BPE, GPT2TokenizerFast) trained on IOI sentences, so
that the IOI names, places and objects are single tokens, as in GPT-2's own vocabulary; and a
tiny random GPT-2 checkpoint of its vocabulary. Shared by the task tests."""

from __future__ import annotations

import functools
import itertools
import json

import yaml
from helpers import link_project

from selfrepair.data.tokenizer import SPECIAL, byte_level_bpe
from selfrepair.tasks.ioi import (
    COAX_NAMES,
    COAX_OBJECTS,
    COAX_PLACES,
    COAX_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    TEMPLATES,
)


@functools.cache
def ioi_tokenizer(vocab_size: int = 2000, n_names: int = len(NAMES), coax: bool = False):
    """GPT2TokenizerFast of a BPE trained on every template filled with the first n_names
    names (few names: most of them stay several tokens); coax: CoAx's template and words too."""
    from transformers import GPT2TokenizerFast

    names = NAMES[:n_names]
    filled = itertools.product(TEMPLATES, PLACES, OBJECTS)
    if coax:
        names += COAX_NAMES
        filled = itertools.chain(
            itertools.product(COAX_TEMPLATES * 4, COAX_PLACES, COAX_OBJECTS), filled
        )
    docs = []
    for i, (template, place, obj) in enumerate(
        itertools.islice(itertools.cycle(list(filled)), 3000 + 256 * coax)
    ):
        a, b = names[i % len(names)], names[(i * 7 + 3) % len(names)]
        docs.append(
            template.replace("[A]", a).replace("[B]", b).replace("[PLACE]", place)
            .replace("[OBJECT]", obj)
        )  # fmt: skip
    backend = byte_level_bpe(docs, vocab_size, [SPECIAL], min_frequency=2)
    return GPT2TokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL
    )


def gpt2_checkpoint(path, tokenizer, seed: int = 0, n_layers: int = 3, d_model: int = 32) -> str:
    """A random GPT-2 (Hugging Face) of the tokenizer's vocabulary saved with it in path."""
    from selfrepair.models.builders import build_model

    model = build_model("gpt2", len(tokenizer), n_layers, d_model, 4, 64, seed=seed)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


# The reduced demo's trained models (config/demo.yaml with .test/config/config.yaml), written
# out so that an overlay can add a path model beside them.
DEMO_MODELS = [
    {"name": name, "train": {"arch": arch, "tokenizer": "stdlib-bpe", "n_layers": 4,
                             "d_model": 32, "n_heads": 4, "steps": 400}}
    for name, arch in (("tiny-gpt2", "gpt2"), ("tiny-pythia", "pythia"))
]  # fmt: skip


def prompts_task_run(run, lines):
    """Make `run` a run folder of the reduced demo with a random GPT-2 by path (ckpt/) and a
    prompts task `mine` on it (prompts.jsonl, relative to the run folder, holding `lines`),
    its overlay mine.yaml. Returns run."""
    link_project(run)
    gpt2_checkpoint(run / "ckpt", ioi_tokenizer())
    (run / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    overlay = {
        "models": [*DEMO_MODELS, {"name": "rand", "path": "ckpt"}],
        "tasks": {"mine": {"type": "prompts", "file": "prompts.jsonl", "metric": "correct_logit",
                           "ablations": ["zero"], "models": ["rand"]}},
    }  # fmt: skip
    (run / "mine.yaml").write_text(yaml.safe_dump(overlay))
    return run


LENGTHS = (12, 9, 12, 7, 10)


def padded_task(model, seed: int = 0, lengths=LENGTHS, pad: int = 0):
    """Random prompts of different lengths, right-padded with `pad`, each with a corrupted
    partner of its length and a counterfactual token per position."""
    import torch

    from selfrepair.engine.inputs import TaskInputs

    gen = torch.Generator().manual_seed(seed)
    n, width, vocab = len(lengths), max(lengths), model.cfg.d_vocab
    tokens = torch.randint(1, vocab, (n, width), generator=gen)
    corrupted = torch.randint(1, vocab, (n, width), generator=gen)
    counter = torch.randint(1, vocab, (n, width - 1), generator=gen)
    tokens[:, 0] = corrupted[:, 0] = 0
    real = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    tokens[~real] = pad
    corrupted[~real] = pad
    return tokens.to(model.W_U.device), TaskInputs(counter, corrupted, real)
