"""Hard-negative captions: per sample, up to K captions that contradict it (NegCLIP's recipe).

Read from the shards (``loss.contrastive.hard_negatives.source=shards``: a ``neg.txt`` member with
one negative per line, or ``neg.json`` holding a list of strings), or made from the caption by a
registered generator:

- ``swap_attributes``: two different colour words exchanged, two different nouns exchanged
  ("a red dog on a blue sofa" -> "a blue dog on a red sofa", "a red sofa on a blue dog"), two
  different size words exchanged, or a single size word turned into its opposite (big -> small);
- ``swap_relations``: a spatial relation turned into its opposite (left/right, above/below,
  over/under, on top of/underneath, in front of/behind, inside/outside);
- ``demo``: for the built-in demo's grammar, its colours, shapes or sizes exchanged and its
  relation turned round; a caption without two of a kind (one shape, a sound) gets its words
  replaced one at a time within the demo's closed vocabulary instead (a colour or shape by another,
  a sound's pitch, loudness, timbre, contour or count by another).

Generators work on whole words, keep the words' capitalisation, and return every alteration they
find; a caption they cannot alter gets none (counted: the training log reports the share of rows
that had a hard negative). K of the alterations are drawn with a random stream seeded by the
sample's key, so a resumed run draws the same ones.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from clipkit.config.checks import positive
from clipkit.errors import ConfigError
from clipkit.registry import Registry

Generator = Callable[[str], list[str]]
GENERATORS: Registry[list[str]] = Registry("hard-negative generator")  # build: a caption -> its negatives


@dataclass
class HardNegativesConfig:
    """Per caption, up to k captions that contradict it (NegCLIP), encoded in the same step and
    added as columns of the image->text and audio->text InfoNCE (loss.contrastive.hard_negatives)."""

    # shards (a neg.txt / neg.json member of each sample) | swap_attributes | swap_relations | demo
    # (generators, from the caption); None: off
    source: str | None = None
    k: int = 1
    weight: float = 1.0  # each hard-negative column's share of the denominator is multiplied by this

    def check(self, key: str) -> None:
        if self.source is None:
            return
        if self.source != "shards" and self.source not in GENERATORS:
            raise ConfigError(
                f"{key}.source",
                f"unknown source '{self.source}'; known: shards (a neg.txt / neg.json "
                f"member per sample), {', '.join(GENERATORS.names())}",
            )
        positive(f"{key}.k", self.k)
        positive(f"{key}.weight", self.weight)


COLOURS = frozenset(
    """red orange yellow green blue purple pink brown black white grey gray silver gold beige
    violet teal cyan magenta maroon navy turquoise crimson""".split()
)
SIZE_OPPOSITES = {
    "small": "large",
    "large": "small",
    "big": "small",
    "little": "big",
    "tiny": "huge",
    "huge": "tiny",
    "tall": "short",
    "short": "tall",
    "thick": "thin",
    "thin": "thick",
    "wide": "narrow",
    "narrow": "wide",
}
# Common objects of photo captions: COCO's categories and frequent nouns of captioned-photo sets.
NOUNS = frozenset(
    """person man woman boy girl child baby people player dog cat horse sheep cow elephant bear
    zebra giraffe bird duck fish mouse animal bicycle bike car motorcycle airplane plane bus train truck boat
    ship bench chair couch sofa bed table desk toilet sink oven microwave refrigerator fridge tv television
    laptop computer keyboard phone book clock vase bottle cup glass bowl plate fork knife spoon banana apple
    sandwich pizza donut cake broccoli carrot umbrella bag backpack suitcase tie hat shirt jacket shoe ball
    kite skateboard surfboard frisbee racket bat glove skis snowboard tree flower grass road street sidewalk
    building house window door wall fence field beach sand water sea ocean river lake sky cloud mountain hill
    rock snow floor box sign lamp pole tower bridge circle square triangle cross star rectangle cube
    sphere""".split()
)
RELATION_OPPOSITES = (
    ("to the left of", "to the right of"),
    ("on the left", "on the right"),
    ("left", "right"),
    ("above", "below"),
    ("over", "under"),
    ("on top of", "underneath"),
    ("in front of", "behind"),
    ("inside", "outside"),
    ("top", "bottom"),
)
WORD = re.compile(r"[A-Za-z]+")


def _like(word: str, template: str) -> str:
    return word.capitalize() if template[:1].isupper() else word


def _with_words(caption: str, replacements: dict[int, str]) -> str:
    """``caption`` with its i-th word replaced by ``replacements[i]`` (capitalisation kept), and
    the article before a replaced word agreeing with it: an ungrammatical negative ("a orange")
    could be told from its caption by the text alone."""
    words = _words(caption)
    replacements = dict(replacements)
    for i, word in list(replacements.items()):
        if i > 0 and words[i - 1] in ("a", "an") and i - 1 not in replacements:
            replacements[i - 1] = "an" if word[0] in "aeiou" else "a"
    pieces, last = [], 0
    for i, match in enumerate(WORD.finditer(caption)):
        if i in replacements:
            pieces += [caption[last : match.start()], _like(replacements[i], match.group())]
            last = match.end()
    return "".join(pieces) + caption[last:]


def _words(caption: str) -> list[str]:
    return [match.group().lower() for match in WORD.finditer(caption)]


def swaps(caption: str, vocabulary: Iterable[str]) -> list[str]:
    """Every pair of different words of ``vocabulary`` in the caption, exchanged."""
    vocabulary = set(vocabulary)
    hits = [(i, w) for i, w in enumerate(_words(caption)) if w in vocabulary]
    return [_with_words(caption, {i: wj, j: wi}) for (i, wi), (j, wj) in itertools.combinations(hits, 2) if wi != wj]


def replacements(caption: str, choices: dict[str, Sequence[str]]) -> list[str]:
    """Every word that ``choices`` knows, replaced by each of its alternatives, one at a time."""
    return [
        _with_words(caption, {i: other})
        for i, word in enumerate(_words(caption))
        for other in choices.get(word, ())
        if other != word
    ]


RELATION_OPPOSITE = dict([*RELATION_OPPOSITES, *((b, a) for a, b in RELATION_OPPOSITES)])
# The longest phrase first, so "to the left of" is one match, not "left" inside it.
RELATION = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in sorted(RELATION_OPPOSITE, key=len, reverse=True)) + r")\b", re.IGNORECASE
)


def _relation_flips(caption: str) -> list[str]:
    """Each relation phrase turned into its opposite."""
    return [
        caption[: m.start()] + _like(RELATION_OPPOSITE[m.group().lower()], m.group()) + caption[m.end() :]
        for m in RELATION.finditer(caption)
    ]


def _unique(captions: Iterable[str], original: str) -> list[str]:
    seen, out = {original.lower()}, []
    for caption in captions:
        if caption.lower() not in seen:
            seen.add(caption.lower())
            out.append(caption)
    return out


@GENERATORS.register("swap_attributes", HardNegativesConfig)
def swap_attributes(caption: str) -> list[str]:
    sizes = [w for w in _words(caption) if w in SIZE_OPPOSITES]
    size_changes = (
        swaps(caption, SIZE_OPPOSITES)
        if len(set(sizes)) > 1
        else replacements(caption, {w: [SIZE_OPPOSITES[w]] for w in sizes})
    )
    return _unique([*swaps(caption, COLOURS), *swaps(caption, NOUNS), *size_changes], caption)


@GENERATORS.register("swap_relations", HardNegativesConfig)
def swap_relations(caption: str) -> list[str]:
    return _unique(_relation_flips(caption), caption)


@functools.lru_cache(maxsize=1)  # built once per process, not per caption
def _demo_vocabulary() -> dict[str, list[str]]:
    """Each word of the demo's closed vocabulary and the words that can stand in its place."""
    from clipkit.data.demo import COLOURS as DEMO_COLOURS
    from clipkit.data.demo import SHAPES, SIZES
    from clipkit.data.demo_audio import CONTOURS, LOUDNESS, PITCHES, PLURAL, TIMBRES

    groups = [
        list(DEMO_COLOURS),
        list(SHAPES),
        list(SIZES),
        list(PITCHES),
        list(LOUDNESS),
        list(TIMBRES),
        list(PLURAL.values()),
        [c for c in CONTOURS if c != "steady"],
        ["two", "three"],
    ]
    return {word: [other for other in group if other != word] for group in groups for word in group}


@GENERATORS.register("demo", HardNegativesConfig)
def demo(caption: str) -> list[str]:
    """The contradictions that keep the caption's words, which a bag of words cannot tell from it:
    colours, shapes or sizes exchanged, the relation turned round. A caption with none (one shape,
    a sound) gets every single-word replacement within the demo's vocabulary instead (its sounds'
    "short" is a duration: no size flip)."""
    from clipkit.data.demo import SIZES

    exchanged = _unique(
        [*swaps(caption, COLOURS), *swaps(caption, NOUNS), *swaps(caption, SIZES), *_relation_flips(caption)], caption
    )
    return exchanged or _unique(replacements(caption, _demo_vocabulary()), caption)


class NegativeCaptions:
    """A sample's hard negatives, at most ``k``: from its shard members or from a generator."""

    def __init__(self, cfg: HardNegativesConfig) -> None:
        self.k = cfg.k
        self.generate: Generator | None = None if cfg.source == "shards" else GENERATORS.get(cfg.source).build

    def __call__(self, sample: dict[str, object], caption: str) -> list[str]:
        if self.generate is not None:
            found = self.generate(caption)
        else:
            found = _from_members(sample)
        rng = random.Random(f"{sample.get('__key__', '')}/{caption}")
        return found if len(found) <= self.k else rng.sample(found, self.k)


def _from_members(sample: dict[str, object]) -> list[str]:
    if "neg.txt" in sample:
        lines = sample["neg.txt"].decode("utf-8").splitlines()
    elif "neg.json" in sample:
        lines = json.loads(sample["neg.json"])
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ValueError("neg.json must hold a list of strings")
    else:
        return []
    return [line.strip() for line in lines if line.strip()]
