"""Whole-pipeline throughput: does the data loader or the accelerator set the pace of clipkit-train?

    python benchmarks/train_pipeline.py --model vit_b32 --batch 512 --precision bf16 [--compile]
        [--workers N] [--steps 60] [--shards DIR] [--images 4096] [--decode-device cuda]

Writes (once) webdataset shards of photo-like JPEGs, 400-640 px a side, quality 90, with captions
(smooth colour fields, texture noise and shapes: as costly to decode as photographs of that size,
which matters here, unlike what they show). Then measures, with the same config:

1. the training loader alone (decode, random resized crop, tokenisation, collation in N worker
   processes), in samples/s;
2. `clipkit-train` itself on those shards (resampled), from its metrics.jsonl: samples/s over the
   logged windows after the first two (compilation and warm-up), and the share of step time spent
   waiting for data (`data_wait_share`). Per window it also prints where the CPU time went, read
   from /proc while the run goes on: the cores busy in the training process's main thread, in its
   busiest other thread and all of them (pinning, OpenMP's, CUDA's), in its data workers and the
   least busy of them. Whether a slow window is the loader's (waiting high, workers short of the
   cores they had alone) or the training process's shows there.

Compare with `train_step_vs_open_clip.py` on the same model and batch (the step alone, fixed batch):
when the pipeline's rate is near the loader's and well under the step's, the loader sets the pace.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WORDS = [
    "a dog",
    "two cats",
    "a red car",
    "a mountain lake",
    "a city street",
    "a plate of food",
    "a child",
    "an old bridge",
    "a field of flowers",
    "a boat",
    "a snowy forest",
    "a bicycle",
]


def photo_like_jpeg(seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(400, 641, size=2))
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    pixels = np.asarray(field.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.int16)
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)  # sensor-like texture
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    caption = f"a photo of {WORDS[seed % len(WORDS)]} next to {WORDS[(seed // 7) % len(WORDS)]}"
    return {"__key__": f"{seed:09d}", "jpg": buffer.getvalue(), "txt": caption}


def write_jpeg_shards(out: Path, images: int, per_shard: int = 256) -> None:
    from clipkit.data.write import write_shards

    if (out / "sizes.json").is_file():
        return
    with Pool() as pool:
        samples = pool.imap(photo_like_jpeg, range(images), chunksize=32)
        write_shards(samples, out, "photos", per_shard)


def shard_pattern(out: Path) -> str:
    count = len(json.loads((out / "sizes.json").read_text()))
    return f"{out}/photos-{{000000..{count - 1:06d}}}.tar"


def overrides(args: argparse.Namespace) -> list[str]:
    return [
        "experiment=demo_image_text",
        f"model={args.model}",
        "data=webdataset",
        "eval=none",
        f"data.train.shards='{shard_pattern(args.shards)}'",
        "data.train.resampled=true",
        f"data.batch_size={args.batch}",
        f"data.workers={args.workers}",
        f"data.decode_device={args.decode_device}",
    ]


def loader_alone(args: argparse.Namespace, batches: int) -> float:
    """Samples/s of the training loader with no model: what the CPU side can deliver."""
    import torch

    from clipkit.config.compose import compose_config
    from clipkit.data.decode import SampleDecoder
    from clipkit.data.pipeline import TrainStream, make_loader
    from clipkit.models.build import build_bundle
    from clipkit.train.prepare import prepare

    checked, sources = prepare(compose_config(overrides(args)))
    cfg = checked.cfg
    bundle = build_bundle(checked, torch.device("cpu"))
    decoder = SampleDecoder(cfg.data.keys, bundle.train_loaders(), bundle.tokenizer)
    stream = TrainStream(sources, decoder, cfg.data.batch_size, True, cfg.data.train.shuffle_buffer, cfg.seed, 0, 0, 1)
    records = iter(make_loader(stream, cfg.data.workers))
    for _ in range(2):  # workers started, queues filled
        next(records)
    start = time.perf_counter()
    rows = sum(next(records)["num_rows"] for _ in range(batches))
    return rows / (time.perf_counter() - start)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_file: Path) -> float:
    """utime + stime of a process or thread from its /proc stat line (0 once it is gone)."""
    try:
        fields = stat_file.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5)


def children(pid: int) -> list[int]:
    found = []
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in tasks.read_text().split()]
    return found


class CpuSampler(threading.Thread):
    """Every ``period`` seconds: the wall time, the lines metrics.jsonl holds, and the cumulative
    CPU seconds of each thread of the training process and of each of its children (the data
    workers)."""

    def __init__(self, pid: int, metrics: Path, profile: list[str] | None = None, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.metrics, self.period = pid, metrics, period
        self.samples: list[tuple[float, int, dict[int, float], dict[int, float]]] = []
        self.done = threading.Event()
        self.profile = profile  # a py-spy command line, started once two windows are logged
        self.profiler: subprocess.Popen | None = None

    def run(self) -> None:
        while not self.done.wait(self.period):
            lines = self.metrics.read_text().count("\n") if self.metrics.is_file() else 0
            if self.profile and lines >= 2 and self.profiler is None:
                try:
                    self.profiler = subprocess.Popen(self.profile, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                except OSError as exc:  # not installed: the run goes on unprofiled
                    print(f"  py-spy did not start: {exc}", flush=True)
                    self.profile = None
            threads = {int(t.name): cpu_seconds(t / "stat") for t in Path(f"/proc/{self.pid}/task").iterdir()}
            workers = {child: cpu_seconds(Path(f"/proc/{child}/stat")) for child in children(self.pid)}
            self.samples.append((time.perf_counter(), lines, threads, workers))

    def per_window(self, windows: int) -> list[dict[str, float]]:
        """Cores busy while each logged record's window ran (from the sample where record k - 1
        had appeared to the one where record k had): in the main thread, in the busiest other
        thread and all other threads of the training process, in all workers and in the least
        busy one."""
        first_seen: dict[int, tuple] = {}
        for sample in self.samples:
            first_seen.setdefault(sample[1], sample)
        cores = []
        for k in range(1, windows + 1):
            if k - 1 not in first_seen or k not in first_seen:
                cores.append(dict.fromkeys(WINDOW_CORES, float("nan")))
                continue
            (t0, _, threads0, workers0), (t1, _, threads1, workers1) = first_seen[k - 1], first_seen[k]
            seconds = max(t1 - t0, 1e-9)
            thread = {tid: (busy - threads0.get(tid, 0.0)) / seconds for tid, busy in threads1.items()}
            worker = [(busy - workers0.get(pid, 0.0)) / seconds for pid, busy in workers1.items()] or [0.0]
            others = [busy for tid, busy in thread.items() if tid != self.pid] or [0.0]
            cores.append(
                {
                    "main thread": thread.get(self.pid, 0.0),
                    "busiest other thread": max(others),
                    "other threads": sum(others),
                    "workers": sum(worker),
                    "least busy worker": min(worker),
                }
            )
        return cores


WINDOW_CORES = ("main thread", "busiest other thread", "other threads", "workers", "least busy worker")


def py_spy_command(pid: int, out: Path, seconds: int) -> list[str]:
    """py-spy sampling the trainer and its workers, idle time included (a thread waiting for data,
    a lock or the GIL shows where it waits), without pausing them."""
    beside_python = Path(sys.executable).parent / "py-spy"  # installed with the interpreter's packages
    program = str(beside_python) if beside_python.is_file() else "py-spy"
    return [
        *(program, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"),
        *("--threads", "--idle", "--nonblocking", "--subprocesses", "--format", "raw", "--output", str(out)),
    ]


def profile_summary(raw: Path, top: int = 6) -> list[str]:
    """From py-spy's collapsed stacks: per thread of the training process, and for the data
    workers together, the innermost frames by share of that thread's samples; for the main thread
    also where each step's time went (the frames called from ``Trainer._train_step``)."""
    innermost: dict[str, Counter] = defaultdict(Counter)
    step_parts: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        at = next(i for i, frame in enumerate(frames) if frame.startswith("thread ("))
        worker = sum(frame.startswith("process ") for frame in frames[:at]) > 1
        thread = frames[at].partition(": ")[2]
        if worker:
            thread = "data workers" if thread == "MainThread" else f"data workers' {thread}"
        innermost[thread][frames[-1]] += int(count)
        if thread == "MainThread":
            step = next((i for i, frame in enumerate(frames) if frame.startswith("Trainer._train_step ")), None)
            if step is not None and step + 1 < len(frames):
                step_parts[frames[step + 1]] += int(count)
    lines = []

    def order(item: tuple[str, Counter]) -> tuple:  # the trainer's main thread, its others, the workers'
        return (item[0].startswith("data workers"), item[0] != "MainThread", -item[1].total())

    for thread, frames in sorted(innermost.items(), key=order):
        shares = "; ".join(f"{100 * n / frames.total():.0f}% {frame}" for frame, n in frames.most_common(top))
        lines.append(f"  {thread}: {shares}")
    if step_parts:
        shares = "; ".join(f"{100 * n / step_parts.total():.0f}% {frame}" for frame, n in step_parts.most_common(top))
        lines.append(f"  each step (main thread): {shares}")
    return lines


def train_run(args: argparse.Namespace) -> dict[str, object]:
    run_dir = Path(tempfile.mkdtemp(prefix="pipeline_"))
    command = [
        str(Path(sys.executable).parent / "clipkit-train"),
        *overrides(args),
        f"hydra.run.dir={run_dir}",
        f"trainer.max_steps={args.steps}",
        "trainer.log_every_n_steps=10",
        "trainer.ckpt_every_n_steps=100000",
        f"trainer.precision={args.precision}",
        f"trainer.compile={str(args.compile).lower()}",
    ]
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        profile = None
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
            profile = py_spy_command(process.pid, args.py_spy / "trainer.txt", args.py_spy_seconds)
        sampler = CpuSampler(process.pid, run_dir / "metrics.jsonl", profile)
        sampler.start()
        returncode = process.wait()
        sampler.done.set()
        sampler.join()
        if sampler.profiler is not None:
            sampler.profiler.wait()
        if returncode != 0:
            stderr.seek(0)
            sys.exit(f"clipkit-train failed:\n{stderr.read()[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cores = sampler.per_window(len(records))
    logged = [(r, c) for r, c in zip(records, cores) if "samples_per_second" in r][2:]
    if not logged:
        sys.exit("too few logged windows: raise --steps")
    windows = [
        {"samples_per_second": r["samples_per_second"], "data_wait_share": r["data_wait_share"], **c} for r, c in logged
    ]
    return {
        "samples_per_second": statistics.median(w["samples_per_second"] for w in windows),
        "data_wait_share": statistics.mean(w["data_wait_share"] for w in windows),
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_b32")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument(
        "--decode-device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where JPEGs are decoded (data.decode_device); with cuda the loader alone only reads "
        "headers and draws crops",
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--shards", type=Path, default=Path("runs/bench_photos"))
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="folder: sample the trainer and its workers with py-spy (--idle) once two windows are "
        "logged, write its raw stacks there and print where each thread spent its time",
    )
    parser.add_argument("--py-spy-seconds", type=int, default=15)
    args = parser.parse_args()
    start = time.perf_counter()
    write_jpeg_shards(args.shards, args.images)
    print(f"shards: {shard_pattern(args.shards)} ({time.perf_counter() - start:.0f} s)", flush=True)
    loader = loader_alone(args, args.loader_batches)
    print(f"loader alone, {args.workers} workers: {loader:.0f} samples/s", flush=True)
    train = train_run(args)
    print(
        f"clipkit-train {args.model} batch {args.batch} {args.precision} compile={args.compile}, "
        f"decode on {args.decode_device}, "
        f"{args.workers} workers: {train['samples_per_second']:.0f} samples/s "
        f"(median of {len(train['windows'])} windows), "
        f"waiting for data {100 * train['data_wait_share']:.0f}% of the time"
    )
    print("  cores busy in each window:")
    print(f"  window  samples/s  waiting  {'  '.join(WINDOW_CORES)}")
    for k, window in enumerate(train["windows"]):
        cores = "  ".join(f"{window[name]:{len(name)}.2f}" for name in WINDOW_CORES)
        print(f"  {k:6d}  {window['samples_per_second']:9.0f}  {100 * window['data_wait_share']:6.0f}%  {cores}")
    if args.py_spy:
        raw = args.py_spy / "trainer.txt"
        if raw.is_file():
            print(f"  py-spy over {args.py_spy_seconds} s after two windows ({raw}):")
            print("\n".join(profile_summary(raw)))
        else:
            print(f"  py-spy wrote nothing to {raw} (not installed, not permitted, or the run ended first)")


if __name__ == "__main__":
    main()
