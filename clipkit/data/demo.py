"""The built-in demo data set, made from nothing but code.

Scenes of one or two coloured shapes at sizes and positions, with compositional captions ("a red
circle to the left of a small blue square") in varied phrasings, so that matching an image to its
caption needs colour, shape, size and layout, and retrieval among similar scenes is not trivial.
Sounds with captions of their timbre, pitch, rhythm, loudness and contour ("three short high
beeps"). Tri-modal samples tie a one-shape scene to a sound: the shape sets the timbre (circle:
beep, square: buzz, triangle: rasp, cross: hiss) and the size the pitch (small: high, large: low).

Layout under ROOT (generated atomically: a temporary folder renamed into place when complete):
- ``train/image_text``, ``train/audio_text``, ``train/trimodal``: shards (png / flac / png + flac,
  with txt) and sizes.json, SHARDS[source] shards each whatever the sample counts;
- ``eval/shapes`` (image zero-shot, "<colour> <shape>"), ``eval/scenes`` (image<->text retrieval),
  ``eval/sounds`` (audio zero-shot, "<pitch> <timbre>"), ``eval/sound_captions`` (audio<->text
  retrieval), ``eval/scene_sounds`` (image<->audio retrieval), ``eval/compositions`` (a scene's
  caption against one with its colours or sizes exchanged or its relation turned round), all in
  CLIP_benchmark's layout.
"""

from __future__ import annotations

import io
import random
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from clipkit.atomic import fsync_dir, fsync_tree
from clipkit.data.demo_audio import PITCHES, TIMBRES, Sound, encode_flac, random_sound, render
from clipkit.data.write import numbered, write_eval_set, write_shards

VERSION = 3  # bump when the generated content changes; the folder name carries it
SHARDS = {"image_text": 16, "audio_text": 6, "trimodal": 4}  # conf/data/demo.yaml names these
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 195),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (6, 9), "large": (12, 16)}  # radius range in pixels
TEMPLATES = (
    "a {c}.",
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a {c} on a plain background.",
    "a small {c}.",
    "a large {c}.",
    "a picture showing the {c}.",
)
RELATIONS = {"left": ("to the left of", "to the right of"), "above": ("above", "below")}


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    size: str
    x: int
    y: int
    radius: int

    def phrase(self, with_size: bool) -> str:
        """'a small red circle' / 'an orange square': the noun phrase with its article."""
        words = " ".join(([self.size] if with_size else []) + [self.colour, self.kind])
        return ("an " if words[0] in "aeiou" else "a ") + words


@dataclass(frozen=True)
class DemoSpec:
    image_size: int = 64
    image_text_samples: int = 16000
    audio_text_samples: int = 6400
    trimodal_samples: int = 4000
    zeroshot_per_class: int = 20
    retrieval_images: int = 400
    sounds_per_class: int = 25
    retrieval_sounds: int = 300
    compositions_per_category: int = 100
    eval_per_shard: int = 1000
    seed: int = 0


def _draw(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x, y, r, fill = shape.x, shape.y, shape.radius, COLOURS[shape.colour]
    if shape.kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape.kind == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    else:  # cross
        w = max(2, r // 3)
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)


def _random_shape(
    rng: random.Random, size: int, region: tuple[int, int, int, int], colour: str = "", kind: str = ""
) -> Shape:
    size_name = rng.choice(list(SIZES))
    radius = rng.randint(*SIZES[size_name])
    x0, y0, x1, y1 = region
    x = rng.randint(min(x0 + radius, x1 - radius), max(x0 + radius, x1 - radius))
    y = rng.randint(min(y0 + radius, y1 - radius), max(y0 + radius, y1 - radius))
    return Shape(colour or rng.choice(list(COLOURS)), kind or rng.choice(SHAPES), size_name, x, y, radius)


def _render(rng: random.Random, shapes: list[Shape], size: int) -> bytes:
    grey = rng.randint(90, 200)
    background = tuple(min(255, max(0, grey + rng.randint(-25, 25))) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw(draw, shape)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _two_shapes(rng: random.Random, size: int) -> tuple[list[Shape], str]:
    """Two shapes split left/right or top/bottom; returns them and the relation axis."""
    axis = rng.choice(list(RELATIONS))
    half = size // 2
    if axis == "left":
        regions = [(0, 0, half, size), (half, 0, size, size)]
    else:
        regions = [(0, 0, size, half), (0, half, size, size)]
    first = _random_shape(rng, size, regions[0])
    second = _random_shape(rng, size, regions[1])
    while (second.colour, second.kind) == (first.colour, first.kind):
        second = _random_shape(rng, size, regions[1])
    return [first, second], axis


def _single_captions(shape: Shape) -> list[str]:
    return [shape.phrase(True), f"a picture of {shape.phrase(False)}", f"{shape.phrase(True)} on a plain background"]


def _pair_captions(shapes: list[Shape], axis: str) -> list[str]:
    first, second = shapes
    forward, backward = RELATIONS[axis]
    return [
        f"{first.phrase(True)} {forward} {second.phrase(True)}",
        f"{second.phrase(False)} {backward} {first.phrase(False)}",
        f"{first.phrase(False)} and {second.phrase(False)}",
    ]


def _image_text_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/train")
    full = (0, 0, spec.image_size, spec.image_size)
    for _ in range(spec.image_text_samples):
        if rng.random() < 0.5:
            shapes = [_random_shape(rng, spec.image_size, full)]
            caption = rng.choice(_single_captions(shapes[0]))
        else:
            shapes, axis = _two_shapes(rng, spec.image_size)
            caption = rng.choice(_pair_captions(shapes, axis))
        yield {"png": _render(rng, shapes, spec.image_size), "txt": caption}


def zeroshot_classnames() -> list[str]:
    return [f"{colour} {kind}" for colour in COLOURS for kind in SHAPES]


def _zeroshot_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/zeroshot")
    full = (0, 0, spec.image_size, spec.image_size)
    for label, name in enumerate(zeroshot_classnames()):
        colour, kind = name.split()
        for _ in range(spec.zeroshot_per_class):
            shape = _random_shape(rng, spec.image_size, full, colour, kind)
            yield {"webp": _render(rng, [shape], spec.image_size), "cls": label}


def _retrieval_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/retrieval")
    for _ in range(spec.retrieval_images):
        shapes, axis = _two_shapes(rng, spec.image_size)
        yield {"webp": _render(rng, shapes, spec.image_size), "txt": "\n".join(_pair_captions(shapes, axis))}


def _png_to_webp(samples: Iterator[dict[str, object]]) -> Iterator[dict[str, object]]:
    """CLIP_benchmark's exports store images as lossless webp."""
    for sample in samples:
        image = Image.open(io.BytesIO(sample["webp"]))
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", lossless=True)
        yield {**sample, "webp": buffer.getvalue()}


TIMBRE_OF_SHAPE = dict(zip(SHAPES, TIMBRES))
PITCH_OF_SIZE = {"small": "high", "large": "low"}


def _scene_with_sound(rng: random.Random, spec: DemoSpec) -> tuple[Shape, Sound]:
    shape = _random_shape(rng, spec.image_size, (0, 0, spec.image_size, spec.image_size))
    sound = random_sound(rng, TIMBRE_OF_SHAPE[shape.kind], PITCH_OF_SIZE[shape.size])
    return shape, sound


def _audio_text_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/audio_text")
    for _ in range(spec.audio_text_samples):
        sound = random_sound(rng)
        yield {"flac": encode_flac(render(sound, rng)), "txt": rng.choice(sound.captions())}


def _trimodal_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/trimodal")
    for _ in range(spec.trimodal_samples):
        shape, sound = _scene_with_sound(rng, spec)
        caption = f"{rng.choice(_single_captions(shape))} with {rng.choice(sound.captions())}"
        yield {"png": _render(rng, [shape], spec.image_size), "flac": encode_flac(render(sound, rng)), "txt": caption}


def sound_classnames() -> list[str]:
    return [f"{pitch} {timbre}" for pitch in PITCHES for timbre in TIMBRES]


SOUND_TEMPLATES = (
    "a {c}.",
    "the sound of a {c}.",
    "a recording of a {c}.",
    "a short {c}.",
    "a long {c}.",
    "a loud {c}.",
    "a quiet {c}.",
)


def _sound_zeroshot_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/sounds")
    for label, name in enumerate(sound_classnames()):
        pitch, timbre = name.split()
        for _ in range(spec.sounds_per_class):
            yield {"flac": encode_flac(render(random_sound(rng, timbre, pitch), rng)), "cls": label}


def _sound_retrieval_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/sound_captions")
    for _ in range(spec.retrieval_sounds):
        sound = random_sound(rng)
        yield {"flac": encode_flac(render(sound, rng)), "txt": "\n".join(sound.captions())}


def _scene_sound_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    rng = random.Random(f"{spec.seed}/scene_sounds")
    for _ in range(spec.retrieval_sounds):
        shape, sound = _scene_with_sound(rng, spec)
        yield {"webp": _render(rng, [shape], spec.image_size), "flac": encode_flac(render(sound, rng))}


COMPOSITION_CATEGORIES = ("swap_colours", "swap_sizes", "swap_positions")


def _composition_samples(spec: DemoSpec) -> Iterator[dict[str, object]]:
    """Two shapes of different colours and sizes, their caption, and one that contradicts it by
    exchanging the colours, exchanging the sizes, or turning the relation round (SugarCrepe's
    layout: ``txt``, ``neg.txt``, ``category.txt``)."""
    rng = random.Random(f"{spec.seed}/compositions")
    for index in range(spec.compositions_per_category * len(COMPOSITION_CATEGORIES)):
        category = COMPOSITION_CATEGORIES[index % len(COMPOSITION_CATEGORIES)]
        shapes, axis = _two_shapes(rng, spec.image_size)
        while shapes[0].colour == shapes[1].colour or shapes[0].size == shapes[1].size:
            shapes, axis = _two_shapes(rng, spec.image_size)
        first, second = shapes
        forward, backward = RELATIONS[axis]
        if category == "swap_colours":
            first, second = replace(first, colour=second.colour), replace(second, colour=first.colour)
        elif category == "swap_sizes":
            first, second = replace(first, size=second.size), replace(second, size=first.size)
        else:
            forward = backward
        yield {
            "webp": _render(rng, shapes, spec.image_size),  # png bytes, made webp by _png_to_webp
            "txt": f"{shapes[0].phrase(True)} {RELATIONS[axis][0]} {shapes[1].phrase(True)}",
            "neg.txt": f"{first.phrase(True)} {forward} {second.phrase(True)}",
            "category.txt": category,
        }


def _write_source(samples: Iterator[dict[str, object]], count: int, out_dir: Path, source: str) -> None:
    per_shard = -(-count // SHARDS[source])
    written = write_shards(numbered(source, samples), out_dir, "demo", per_shard)
    if len(written) != SHARDS[source]:
        raise ValueError(f"{count} {source} samples do not fill {SHARDS[source]} shards")


def _write_eval_sets(evals: Path, spec: DemoSpec) -> None:
    classify_shapes = {"classnames": zeroshot_classnames(), "templates": TEMPLATES}
    classify_sounds = {"classnames": sound_classnames(), "templates": SOUND_TEMPLATES}
    retrieval, compositionality = {"dataset_type": "retrieval"}, {"dataset_type": "compositionality"}
    # name, key prefix, samples, whose images are stored as WebP, what the set's files say
    sets = (
        ("shapes", "zs", _zeroshot_samples, True, classify_shapes),
        ("scenes", "rt", _retrieval_samples, True, retrieval),
        ("sounds", "szs", _sound_zeroshot_samples, False, classify_sounds),
        ("sound_captions", "srt", _sound_retrieval_samples, False, retrieval),
        ("scene_sounds", "iat", _scene_sound_samples, True, retrieval),
        ("compositions", "cmp", _composition_samples, True, compositionality),
    )
    for name, prefix, samples, webp, described in sets:
        numbered_samples = numbered(prefix, samples(spec))
        write_eval_set(
            evals / name,
            _png_to_webp(numbered_samples) if webp else numbered_samples,
            per_shard=spec.eval_per_shard,
            **described,
        )


def write_demo(root: Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the demo set under ``root`` unless it is already complete there; return ``root``."""
    root = Path(root).expanduser()
    if (root / "COMPLETE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        train = staging / "train"
        _write_source(_image_text_samples(spec), spec.image_text_samples, train / "image_text", "image_text")
        _write_source(_audio_text_samples(spec), spec.audio_text_samples, train / "audio_text", "audio_text")
        _write_source(_trimodal_samples(spec), spec.trimodal_samples, train / "trimodal", "trimodal")
        _write_eval_sets(staging / "eval", spec)
        (staging / "COMPLETE").write_text(f"clipkit demo v{VERSION} {spec}\n")
        fsync_tree(staging)
        if root.exists() and not (root / "COMPLETE").is_file():  # an incomplete earlier attempt
            shutil.rmtree(root)
        try:
            staging.rename(root)
            fsync_dir(root.parent)
        except OSError:
            if not (root / "COMPLETE").is_file():
                raise
            shutil.rmtree(staging)  # another process finished the same set first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
