"""Training-loader throughput: clipkit's against open_clip_train's, per second and per CPU-second.

    pip install -e ".[bench]"                            # once: scikit-image, for its photographs
    python benchmarks/parity_open_clip.py --setup        # once: .parity-venv with open_clip_train
    python benchmarks/data_pipeline.py [--workers 0 1 2] [--batches 30] [--repeats 3] [--shards PATTERN]
                                       [--decode-device cuda]   # with a GPU: clipkit's nvJPEG path

The shards: unless ``--shards`` names others, webdataset shards of real photographs, written once
into ``--out``: scikit-image's sample photographs (astronaut, coffee, chelsea, rocket, Hubble deep
field, a stained tissue, a retina, camera man, moon, coins, grass, gravel, bricks; no download)
cropped, mirrored and rescaled to 400-640 px on the longer side, JPEG quality 90, each with a caption.

Both loaders read the same shards with ViT-B/32's preprocessing (224 px, OpenAI's mean/std, random
resized crop of scale 0.9-1, open_clip's tokenizer with 77 tokens), batch 64, shards drawn with
replacement. open_clip_train's is its own ``get_wds_dataset`` (in ``.parity-venv``: it needs
webdataset 0.2.86); clipkit's is what ``clipkit-train`` builds (TrainStream and its DataLoader),
plus the normalisation that clipkit runs on the training device, here on the CPU. Each
measurement is a fresh process; sides alternate within each repeat. Printed: samples/s and
samples per CPU-second of the whole process tree (loader process and workers, from /proc) over
``--batches`` batches after 3 warm-up batches; then, in one process and per sample, the CPU
milliseconds of each stage (read: tar -> raw sample; decode; augment: crop and resize, and
normalise; tokenise; collate).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARITY_PYTHON = ROOT / ".parity-venv" / "bin" / "python"
BATCH, SIZE, CONTEXT, SCALE = 64, 224, 77, (0.9, 1.0)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PHOTOS = {  # scikit-image's sample photographs, and what they show
    "astronaut": "an astronaut in a spacesuit in front of a flag",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat looking to the side",
    "rocket": "a rocket on its launch pad",
    "hubble_deep_field": "galaxies in the deep field of space",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "retina": "the back of a human eye",
    "camera": "a man with a camera on a tripod",
    "moon": "the cratered surface of the moon",
    "coins": "old coins laid out on a table",
    "grass": "a patch of grass",
    "gravel": "a close view of gravel",
    "brick": "a brick wall",
}
FRAMINGS = ["a photo of {}", "a cropped picture of {}", "{}, seen up close", "a mirrored photo of {}"]


# ---------------------------------------------------------------------------------------- shards
def photo_jpeg(index: int) -> dict[str, object]:
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(index)
    name = list(PHOTOS)[index % len(PHOTOS)]
    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    width, height = image.size
    fw, fh = rng.uniform(0.6, 1.0, size=2)
    left, top = int(rng.uniform(0, 1 - fw) * width), int(rng.uniform(0, 1 - fh) * height)
    image = image.crop((left, top, left + int(fw * width), top + int(fh * height)))
    mirrored = rng.random() < 0.5
    if mirrored:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    longer = int(rng.integers(400, 641))
    scale = longer / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    framing = FRAMINGS[3] if mirrored else FRAMINGS[int(rng.integers(0, 3))]
    return {"__key__": f"{index:08d}", "jpg": buffer.getvalue(), "txt": framing.format(PHOTOS[name])}


def write_photo_shards(out: Path, images: int) -> str:
    from multiprocessing import Pool

    from clipkit.data.write import write_shards

    per_shard = 256
    if not (out / "sizes.json").is_file():
        with Pool() as pool:
            write_shards(pool.imap(photo_jpeg, range(images), chunksize=16), out, "photos", per_shard)
    count = len(json.loads((out / "sizes.json").read_text()))
    return f"{out}/photos-{{000000..{count - 1:06d}}}.tar"


# ------------------------------------------------------------------------------------ measuring
def tree_cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants so far (user + system), from /proc."""
    parent_of, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent_of[int(entry)], ticks[int(entry)] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grown = {os.getpid()}, True
    while grown:
        children = {pid for pid, parent in parent_of.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def rate(batches, count: int, rows: Callable[[object], int]) -> dict[str, float]:
    """Samples/s and samples per CPU-second over ``count`` batches after 3 warm-up ones."""
    for _ in range(3):
        next(batches)
    cpu, start = tree_cpu_seconds(), time.perf_counter()
    samples = sum(rows(next(batches)) for _ in range(count))
    wall, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    return {"samples_per_s": samples / wall, "samples_per_cpu_s": samples / cpu}


def clipkit_parts(decode_device: str = "cpu"):
    import torch

    from clipkit.config.schema import ImageTransformConfig, SampleKeysConfig
    from clipkit.data.decode import SampleDecoder
    from clipkit.data.device_decode import DeviceImages
    from clipkit.data.image_crop import ImageNormalizer
    from clipkit.data.transforms import build_train_image_loader
    from clipkit.models.towers.text import TextTransformerConfig, build_tokenizer

    torch.set_num_threads(1)  # the normalisation stands in for the device's: one core, as the rest
    image = ImageTransformConfig(mean=list(MEAN), std=list(STD), train_crop_scale=list(SCALE))
    tokenizer = build_tokenizer(TextTransformerConfig(context_length=CONTEXT))
    return SampleDecoder(
        SampleKeysConfig(), {"image": build_train_image_loader(image, SIZE, decode_device)}, tokenizer
    ), DeviceImages(SIZE, ImageNormalizer(MEAN, STD), torch.device(decode_device))


def measure_clipkit(shards: str, workers: int, count: int, decode_device: str = "cpu") -> dict[str, float]:
    """With ``decode_device=cuda`` the GPU decodes (data.decode_device=cuda) and each batch waits
    for it, as a training step that uses the batch would."""
    import torch

    from clipkit.data.pipeline import TrainStream, make_loader
    from clipkit.data.shards import resolve_sources

    decoder, to_device = clipkit_parts(decode_device)
    stream = TrainStream(
        resolve_sources(shards),
        decoder,
        BATCH,
        resampled=True,
        shuffle_buffer=1000,
        seed=0,
        epoch=0,
        rank=0,
        world_size=1,
    )

    def rows(batch) -> int:
        to_device(batch["image"], batch["has_image"])
        if decode_device == "cuda":
            torch.cuda.synchronize()
        return batch["num_rows"]

    return rate(iter(make_loader(stream, workers, pin_memory=decode_device == "cuda")), count, rows)


def open_clip_parts():
    import open_clip
    from open_clip.transform import AugmentationCfg, image_transform

    preprocess = image_transform(SIZE, is_train=True, mean=MEAN, std=STD, aug_cfg=AugmentationCfg(scale=SCALE))
    return preprocess, open_clip.get_tokenizer("ViT-B-32")


def measure_open_clip(shards: str, workers: int, count: int) -> dict[str, float]:
    from argparse import Namespace

    import torch
    from open_clip_train.data import get_wds_dataset

    torch.set_num_threads(1)
    preprocess, tokenizer = open_clip_parts()
    args = Namespace(
        train_data=shards,
        train_num_samples=10**7,
        dataset_resampled=True,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=BATCH,
        workers=workers,
        world_size=1,
    )
    loader = get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer).dataloader
    return rate(iter(loader), count, lambda batch: len(batch[0]))


def per_sample_ms(stage: Callable[[], None], samples: int) -> float:
    start = time.process_time()
    stage()
    return (time.process_time() - start) / samples * 1e3


def breakdown(side: str, shards: str, samples: int) -> dict[str, float]:
    """CPU ms per sample of each stage, in this process, over the first ``samples`` samples."""
    import braceexpand
    import torch
    import webdataset as wds

    torch.set_num_threads(1)
    urls = list(braceexpand.braceexpand(shards))
    raw: list[dict] = []

    def read() -> None:
        for sample in wds.tarfile_to_samples()(iter({"url": url} for url in urls)):
            raw.append(sample)
            if len(raw) == samples:
                return

    ms = {"read": per_sample_ms(read, samples)}
    images = [r["jpg"] for r in raw]
    captions = [r["txt"].decode() for r in raw]
    torch.manual_seed(0)
    if side == "clipkit":
        decoder, to_device = clipkit_parts()
        loader = decoder.image_loader
        decoded: list = []
        ms["decode"] = per_sample_ms(lambda: decoded.extend(loader.decode(data) for data in images), samples)
        crops: list = []
        ms["augment"] = per_sample_ms(lambda: crops.extend(loader.resize(*d) for d in decoded), samples)
        rows = [{"image": crop, "text": caption} for crop, caption in zip(crops, captions)]
        ms["tokenise+collate"] = per_sample_ms(
            lambda: [decoder.collate(rows[i : i + BATCH]) for i in range(0, samples, BATCH)], samples
        )
        batch, present = torch.stack(crops[:BATCH]), torch.ones(BATCH, dtype=torch.bool)
        ms["augment"] += per_sample_ms(lambda: [to_device(batch, present) for _ in range(samples // BATCH)], samples)
    else:
        from PIL import Image
        from webdataset.filters import default_collation_fn

        preprocess, tokenizer = open_clip_parts()
        pil: list = []

        def decode() -> None:  # webdataset's "pilrgb" decoder
            for data in images:
                image = Image.open(io.BytesIO(data))
                image.load()
                pil.append(image.convert("RGB"))

        ms["decode"] = per_sample_ms(decode, samples)
        tensors: list = []
        ms["augment"] = per_sample_ms(lambda: tensors.extend(preprocess(image) for image in pil), samples)
        tokens: list = []
        ms["tokenise"] = per_sample_ms(lambda: tokens.extend(tokenizer(c)[0] for c in captions), samples)
        ms["collate"] = per_sample_ms(
            lambda: [
                default_collation_fn(list(zip(tensors[i : i + BATCH], tokens[i : i + BATCH])))
                for i in range(0, samples, BATCH)
            ],
            samples,
        )
    return ms


# ------------------------------------------------------------------------------------------ main
def run_side(side: str, *args: str) -> dict:
    python = str(PARITY_PYTHON) if side == "open_clip" else sys.executable
    result = subprocess.run(
        [python, __file__, "--side", side, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT) if side == "clipkit" else ""},
    )
    if result.returncode != 0:
        sys.exit(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", help="a brace pattern of .tar shards with jpg and txt members")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_photos")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--breakdown-samples", type=int, default=512)
    parser.add_argument(
        "--decode-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: clipkit decodes on the GPU (data.decode_device=cuda); open_clip as ever",
    )
    parser.add_argument("--side", choices=["clipkit", "open_clip"], help=argparse.SUPPRESS)
    parser.add_argument("--measure-workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # one measurement, in a fresh process of the side's environment
        if args.measure_workers is None:
            print(json.dumps(breakdown(args.side, args.shards, args.breakdown_samples)))
        else:
            print(
                json.dumps(
                    measure_clipkit(args.shards, args.measure_workers, args.batches, args.decode_device)
                    if args.side == "clipkit"
                    else measure_open_clip(args.shards, args.measure_workers, args.batches)
                )
            )
        return
    if not PARITY_PYTHON.is_file():
        sys.exit(f"no {PARITY_PYTHON}: run `python benchmarks/parity_open_clip.py --setup` first")
    shards = args.shards or write_photo_shards(args.out, args.images)
    print(
        f"shards {shards}; batch {BATCH}, {SIZE} px, {args.batches} batches per measurement; clipkit decodes "
        f"on the {args.decode_device}\n",
        flush=True,
    )
    figures: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for workers in args.workers:
            for side in ("clipkit", "open_clip") if repeat % 2 == 0 else ("open_clip", "clipkit"):
                figure = run_side(
                    side,
                    "--shards",
                    shards,
                    "--measure-workers",
                    str(workers),
                    "--batches",
                    str(args.batches),
                    "--decode-device",
                    args.decode_device,
                )
                figures.setdefault((workers, side), []).append(figure)
                print(
                    f"repeat {repeat} workers {workers} {side:<9}: {figure['samples_per_s']:.1f} samples/s, "
                    f"{figure['samples_per_cpu_s']:.1f} per CPU-second",
                    flush=True,
                )
    print(f"\nmedian (min-max) over {args.repeats} repeats")
    print(f"{'workers':>7} {'side':<9} {'samples/s':>22} {'samples/CPU-s':>22} {'ratio per CPU-s':>16}")
    for workers in args.workers:
        base = statistics.median(f["samples_per_cpu_s"] for f in figures[(workers, "open_clip")])
        for side in ("open_clip", "clipkit"):
            runs = figures[(workers, side)]
            per_cpu = [f["samples_per_cpu_s"] for f in runs]
            print(
                f"{workers:>7} {side:<9} {spread([f['samples_per_s'] for f in runs]):>22} "
                f"{spread(per_cpu):>22} {statistics.median(per_cpu) / base:>15.2f}x"
            )
    print(f"\nCPU ms per sample by stage (one process, first {args.breakdown_samples} samples)")
    for side in ("open_clip", "clipkit"):
        stages = run_side(side, "--shards", shards, "--breakdown-samples", str(args.breakdown_samples))
        print(
            f"{side:<9} " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + f"; total {sum(stages.values()):.2f}"
        )


if __name__ == "__main__":
    main()
