"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
John gave a drink to" -> " Mary". The templates are the paper's fifteen, in both orders of the
first mention (ABBA, BABA); names, places and objects are those of its lists (and a few more)
that are single tokens in the model's tokenizer. Answer: the indirect object; counterfactual:
the subject; corrupted prompt ("ABC"): the same template, place and object with three other
names, so it has the same length. CoAx's protocol (Gong 2026) beside it: its one template and
its lists (templates: coax, names: coax), and rows without BOS (prepend_bos: false)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from selfrepair.tasks.prompts import Prompt, TaskError, TaskPrompts, encode, pad_prompts

__all__ = [
    "COAX_NAMES",
    "COAX_OBJECTS",
    "COAX_PLACES",
    "COAX_TEMPLATES",
    "MIN_NAMES",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "TEMPLATES",
    "ioi_prompts",
    "ioi_prompt",
    "single_tokens",
]

# Wang et al.'s BABA templates; ABBA swaps the first mention. Each ends with the answer [A].
TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] "
    "to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)
# Wang et al.'s names, then a few common in code and documentation (a tokenizer trained on code
# may lack many English names).
NAMES = (
    *"Michael Christopher Jessica Matthew Ashley Jennifer Joshua Amanda Daniel David James".split(),
    *"Robert John Joseph Andrew Ryan Brandon Jason Justin Sarah William Jonathan Stephanie".split(),
    *"Brian Nicole Nicholas Anthony Heather Eric Elizabeth Adam Megan Melissa Kevin Steven".split(),
    *"Thomas Timothy Christina Kyle Rachel Laura Lauren Amber Brittany Danielle Richard".split(),
    *"Kimberly Jeffrey Amy Crystal Michelle Tiffany Jeremy Benjamin Mark Emily Aaron Charles".split(),
    *"Rebecca Jacob Stephen Patrick Sean Erin Jamie Kelly Samantha Nathan Sara Dustin Paul".split(),
    *"Angela Tyler Scott Katherine Andrea Gregory Erica Mary Travis Lisa Kenneth Bryan".split(),
    *"Lindsey Kristen Jose Alexander Jesse Katie Lindsay Shannon Vanessa Courtney Christine".split(),
    *"Alicia Cody Allison Bradley Samuel".split(),
    *"Alice Bob Carol Dave Eve Frank Grace Guido Tim Fred Jack Barry Anna Peter Tom Max".split(),
)
PLACES = (
    *"store garden restaurant school hospital office house station".split(),
    *"park library market bank city home room".split(),
)
OBJECTS = (
    *"ring kiss bone basketball computer necklace drink snack".split(),
    *"book key letter file box gift list".split(),
)
# CoAx (Gong 2026, release 2.1.0), src/curvgraph/circuits.py `ioi_prompts` and its lists
# _IOI_NAMES, _IOI_PLACES, _IOI_OBJECTS: one template, always ABBA (the indirect object named
# first), written here in TEMPLATES' BABA form.
COAX_TEMPLATES = ("When [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",)
COAX_NAMES = (
    *"John Mary Tom James Dan Sid Martin Anna Paul Kate Mark Lucy Peter Sarah".split(),
    *"David Emma".split(),
)
COAX_PLACES = tuple("store park school office garden station market library".split())
COAX_OBJECTS = tuple("drink book ball ring kiss snack bone note".split())
WORD_SETS = {"wang": (NAMES, PLACES, OBJECTS), "coax": (COAX_NAMES, COAX_PLACES, COAX_OBJECTS)}
# A prompt's two names and its corrupted prompt's three are all different.
MIN_NAMES = 5
SLOT = re.compile(r"\[(A|B)\]")


def single_tokens(tokenizer: Any, words: tuple[str, ...]) -> list[str]:
    """The words that are one token after a space (as they stand in every template)."""
    return [w for w in words if len(encode(tokenizer, " " + w)) == 1]


def _fill(template: str, names: list[str], place: str, obj: str) -> str:
    """The template with [PLACE], [OBJECT] and its name slots, in order, filled."""
    text = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    slots = iter(names)
    return SLOT.sub(lambda _: next(slots), text)


def ioi_prompt(
    tokenizer: Any,
    bos_id: int | None,
    template: str,
    abba: bool,
    names: list[str],
    place: str,
    obj: str,
) -> Prompt:
    """One IOI prompt: names = [A, B, X, Y, Z] (A the indirect object, B the subject, X Y Z the
    corrupted prompt's names in order of mention); bos_id None: no BOS before the text."""
    a, b, x, y, z = names
    body = template[: -len(" [A]")]
    if abba:
        body = body.replace("[B] and [A]", "[A] and [B]", 1)
    order = SLOT.findall(body)  # e.g. B A B
    text = _fill(body, [a if s == "A" else b for s in order], place, obj)
    bos = [] if bos_id is None else [bos_id]
    ids = [*bos, *encode(tokenizer, text)]
    corrupted = [*bos, *encode(tokenizer, _fill(body, [x, y, z], place, obj))]
    answer, subject = (encode(tokenizer, " " + n)[0] for n in (a, b))
    if len(corrupted) != len(ids) or ids.count(answer) != 1 or ids.count(subject) != 2:
        raise TaskError(
            f"the tokenizer does not keep the names of {text!r} as single tokens in context; "
            "use another tokenizer or a prompts file (type: prompts)"
        )
    kind = TEMPLATES if template in TEMPLATES else COAX_TEMPLATES
    return Prompt(
        ids=tuple(ids),
        answers=((len(ids) - 1, answer),),
        counter=(subject,),
        corrupted=tuple(corrupted),
        tail=(answer,),
        text=text,
        info={
            "io_position": ids.index(answer),
            "s1_position": ids.index(subject),
            "s2_position": len(ids) - 1 - ids[::-1].index(subject),
            "abba": int(abba),
            "template": kind.index(template),
        },
    )


def ioi_words(tokenizer: Any, names: str = "wang") -> tuple[list[str], list[str], list[str]]:
    """The names, places and objects prompts draw from: Wang et al.'s lists, those that are
    single tokens; CoAx's lists whole (its draws are over every word), else TaskError."""
    lists = WORD_SETS[names]
    kept = [single_tokens(tokenizer, words) for words in lists]
    lost = [w for ws, k in zip(lists, kept, strict=True) for w in ws if w not in k]
    if names == "coax" and lost:
        raise TaskError(
            f"CoAx's words {', '.join(lost)} are not single tokens for this tokenizer; CoAx "
            "draws from every word of its lists: use names: wang with this model"
        )
    if len(kept[0]) < MIN_NAMES or not kept[1] or not kept[2]:
        raise TaskError(
            f"the tokenizer keeps {len(kept[0])} of {len(lists[0])} candidate names, "
            f"{len(kept[1])} places and {len(kept[2])} objects as single tokens; IOI needs at "
            f"least {MIN_NAMES} names, a place and an object: use a model whose tokenizer has "
            "them, or write the prompts yourself (type: prompts)"
        )
    return kept[0], kept[1], kept[2]


def _wang_draws(rng, n, names, places, objects):
    """Wang et al.'s sampling, this workflow's since its first IOI run: per prompt a template,
    five names, a place and an object from one generator; ABBA and BABA alternating."""
    for i in range(n):
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        chosen = [str(w) for w in rng.choice(names, MIN_NAMES, replace=False)]
        place, obj = str(rng.choice(places)), str(rng.choice(objects))
        yield template, i % 2 == 0, chosen, place, obj


def _coax_draws(rng, abc, n, names, places, objects):
    """CoAx's sampling (`ioi_prompts`): per prompt the indirect object and the subject, a place
    and an object from the seed's generator, in that order, every prompt ABBA on its template;
    the corrupted prompt's three other names from a second generator `abc`, so that the first
    one's draws stay CoAx's."""
    for _ in range(n):
        io, subject = (str(w) for w in rng.choice(names, 2, replace=False))
        place, obj = str(rng.choice(places)), str(rng.choice(objects))
        others = [w for w in names if w not in (io, subject)]
        abc_names = [str(w) for w in abc.choice(others, MIN_NAMES - 2, replace=False)]
        yield COAX_TEMPLATES[0], True, [io, subject, *abc_names], place, obj


def ioi_prompts(
    tokenizer: Any,
    n: int,
    seed: int,
    bos_id: int,
    templates: str = "wang",
    names: str = "wang",
    prepend_bos: bool = True,
) -> TaskPrompts:
    """n IOI prompts drawn with `seed`, each with its ABC corrupted prompt: Wang et al.'s
    templates (ABBA and BABA alternating; template, names, place and object drawn per prompt)
    or CoAx's (its one template, ABBA; drawn as CoAx's `ioi_prompts` draws them, so that with
    CoAx's names the texts are CoAx's for the same seed).

    Args:
        tokenizer: the model's tokenizer (Hugging Face).
        n: prompts.
        seed: the run's seed (a task's prompt seed).
        bos_id: the id every row starts with (prepend_bos) and padding takes.
        templates: wang or coax.
        names: whose names, places and objects: wang or coax.
        prepend_bos: start every row with bos_id (CoAx's rows have no BOS).
    """
    words = ioi_words(tokenizer, names)
    rng = np.random.default_rng(seed)
    if templates == "coax":
        draws = _coax_draws(rng, np.random.default_rng([seed, 1]), n, *words)
    else:
        draws = _wang_draws(rng, n, *words)
    first = bos_id if prepend_bos else None
    prompts = [ioi_prompt(tokenizer, first, *draw) for draw in draws]
    attrs = {
        "names": words[0],
        "places": words[1],
        "objects": words[2],
        "orders": "ABBA (even prompts) and BABA (odd prompts)",
        "answer": "the indirect object; counterfactual: the subject",
        "corrupted_prompts": "ABC: the same template, place and object, three other names",
    }
    if (templates, names, prepend_bos) != ("wang", "wang", True):
        attrs |= {"templates": templates, "word_lists": names, "prepend_bos": int(prepend_bos)}
    if templates == "coax":
        attrs["orders"] = "ABBA (CoAx's template)"
    return pad_prompts(prompts, bos_id, attrs)
