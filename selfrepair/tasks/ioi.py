"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
John gave a drink to" -> " Mary". The templates are the paper's fifteen, in both orders of the
first mention (ABBA, BABA); names, places and objects are those of its lists (and a few more)
that are single tokens in the model's tokenizer. Answer: the indirect object; counterfactual:
the subject; corrupted prompt ("ABC"): the same template, place and object with three other
names, so it has the same length."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from selfrepair.tasks.prompts import Prompt, TaskError, TaskPrompts, encode, pad_prompts

__all__ = [
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
    tokenizer: Any, bos_id: int, template: str, abba: bool, names: list[str], place: str, obj: str
) -> Prompt:
    """One IOI prompt: names = [A, B, X, Y, Z] (A the indirect object, B the subject, X Y Z the
    corrupted prompt's names in order of mention)."""
    a, b, x, y, z = names
    body = template[: -len(" [A]")]
    if abba:
        body = body.replace("[B] and [A]", "[A] and [B]", 1)
    order = SLOT.findall(body)  # e.g. B A B
    text = _fill(body, [a if s == "A" else b for s in order], place, obj)
    ids = [bos_id, *encode(tokenizer, text)]
    corrupted = [bos_id, *encode(tokenizer, _fill(body, [x, y, z], place, obj))]
    answer, subject = (encode(tokenizer, " " + n)[0] for n in (a, b))
    if len(corrupted) != len(ids) or ids.count(answer) != 1 or ids.count(subject) != 2:
        raise TaskError(
            f"the tokenizer does not keep the names of {text!r} as single tokens in context; "
            "use another tokenizer or a prompts file (type: prompts)"
        )
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
            "template": TEMPLATES.index(template),
        },
    )


def ioi_prompts(tokenizer: Any, n: int, seed: int, bos_id: int) -> TaskPrompts:
    """n IOI prompts, ABBA and BABA alternating, template, names, place and object drawn with
    `seed`; each with its ABC corrupted prompt.

    Args:
        tokenizer: the model's tokenizer (Hugging Face).
        n: prompts.
        seed: the run's seed.
        bos_id: the id every row starts with.
    """
    names = single_tokens(tokenizer, NAMES)
    places, objects = single_tokens(tokenizer, PLACES), single_tokens(tokenizer, OBJECTS)
    if len(names) < MIN_NAMES or not places or not objects:
        raise TaskError(
            f"the tokenizer keeps {len(names)} of {len(NAMES)} candidate names, {len(places)} "
            f"places and {len(objects)} objects as single tokens; IOI needs at least "
            f"{MIN_NAMES} names, a place and an object: use a model whose tokenizer has them, "
            "or write the prompts yourself (type: prompts)"
        )
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        chosen = [str(w) for w in rng.choice(names, MIN_NAMES, replace=False)]
        place, obj = str(rng.choice(places)), str(rng.choice(objects))
        prompts.append(ioi_prompt(tokenizer, bos_id, template, i % 2 == 0, chosen, place, obj))
    attrs = {
        "names": names,
        "places": places,
        "objects": objects,
        "orders": "ABBA (even prompts) and BABA (odd prompts)",
        "answer": "the indirect object; counterfactual: the subject",
        "corrupted_prompts": "ABC: the same template, place and object, three other names",
    }
    return pad_prompts(prompts, bos_id, attrs)
