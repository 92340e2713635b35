"""What data.bucket_pool saves: text positions per batch, and what it costs the loader.

    python benchmarks/length_buckets.py [--captions FILE] [--samples 8192] [--batch 256]
        [--pool 4096] [--multiple 8] [--workers 2] [--repeats 2]

Writes (once per setting, in a temporary folder) webdataset shards of 256 px JPEGs of noise with
captions: the lines of ``--captions FILE`` (your own, one per line) or, without it, synthetic ones
whose word counts follow a log-normal law (median 10 words, a long tail cut at the 77-token context:
the shape of web alt text, not a measurement of it). Then reads one pass with clipkit's training
loader (TrainStream and its DataLoader, ``--workers`` processes, ViT-B/32's 224 px crop) three
ways, alternating over ``--repeats``: padded to the context (what open_clip_torch 3.3.0's trainer
feeds its text tower), ``data.text_pad_multiple`` alone, and with ``data.bucket_pool``. Printed per
way: the text positions per batch (what the text tower's cost follows) and the loader's samples/s.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from clipkit.config.schema import ImageTransformConfig, SampleKeysConfig
from clipkit.data.decode import SampleDecoder
from clipkit.data.pipeline import TrainStream, make_loader
from clipkit.data.shards import resolve_sources
from clipkit.data.transforms import build_train_image_loader
from clipkit.data.write import write_shards
from clipkit.models.towers.text import TextTransformerConfig, build_tokenizer

WORDS = "a the photo of red blue small large dog cat on in with near old new city street tree car man woman".split()


def synthetic_captions(count: int, rng: random.Random) -> list[str]:
    lengths = (min(70, max(1, round(math.exp(rng.gauss(math.log(10), 0.7))))) for _ in range(count))
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


def write_data(folder: Path, captions: list[str], rng: random.Random) -> str:
    images = []
    for seed in range(16):  # 16 distinct JPEGs, reused: decoding costs what a photo's does
        pixels = torch.randint(0, 256, (256, 256, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    samples = ({"__key__": f"s{i}", "jpg": images[i % 16], "txt": c} for i, c in enumerate(captions))
    shards = write_shards(samples, folder, "b", 512)
    return str(folder / f"b-{{000000..{len(shards) - 1:06d}}}.tar")


def one_pass(pattern: str, args: argparse.Namespace, multiple: int | None, pool: int | None) -> tuple[float, float]:
    decoder = SampleDecoder(
        SampleKeysConfig(),
        {"image": build_train_image_loader(ImageTransformConfig(), 224)},
        build_tokenizer(TextTransformerConfig()),
        text_pad_multiple=multiple,
    )
    stream = TrainStream(resolve_sources(pattern), decoder, args.batch, False, 1000, 0, 0, 0, 1, bucket_pool=pool)
    widths, rows = [], 0
    start = time.perf_counter()
    for batch in make_loader(stream, args.workers):
        if batch["num_rows"]:
            widths.append(batch["text"].shape[1])
            rows += batch["num_rows"]
    return statistics.mean(widths), rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", help="a text file of captions, one per line")
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pool", type=int, default=4096)
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(0)
    if args.captions:
        lines = [line.strip() for line in Path(args.captions).read_text().splitlines() if line.strip()]
        captions = [rng.choice(lines) for _ in range(args.samples)] if len(lines) < args.samples else lines
        rng.shuffle(captions)
        captions = captions[: args.samples]
    else:
        captions = synthetic_captions(args.samples, rng)
    tokens = (build_tokenizer(TextTransformerConfig())(captions) != 0).sum(dim=1).float()
    print(
        f"{len(captions)} captions ({args.captions or 'synthetic'}): tokens per caption median "
        f"{tokens.median():.0f}, mean {tokens.mean():.1f}, {100 * (tokens >= 77).float().mean():.1f} % at the "
        f"77-token context; batch {args.batch}, {args.workers} workers, {args.repeats} alternating run(s)",
        flush=True,
    )
    ways = {
        "padded to 77 (open_clip 3.3)": (None, None),
        f"data.text_pad_multiple={args.multiple}": (args.multiple, None),
        f"  + data.bucket_pool={args.pool}": (args.multiple, args.pool),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as folder:
        pattern = write_data(Path(folder), captions, rng)
        names = list(ways)
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                results[name].append(one_pass(pattern, args, *ways[name]))
                print(f"  run {repeat + 1} {name}: {results[name][-1][1]:.0f} samples/s", flush=True)
    print(f"{'':<32} {'text positions per batch':>25} {'of 77':>7} {'loader samples/s':>18}")
    for name, runs in results.items():
        width = runs[0][0]  # the same in every run: the stream is deterministic
        rates = [r for _, r in runs]
        print(f"{name:<32} {width:>25.1f} {100 * width / 77:>6.0f}% {min(rates):>8.0f}–{max(rates):.0f}")


if __name__ == "__main__":
    main()
