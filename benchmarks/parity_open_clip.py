"""Learning parity with open_clip_train: the same tiny CLIP, data, schedule and seeds in both.

    python benchmarks/parity_open_clip.py --setup                  # once: .parity-venv (open_clip_train)
    python benchmarks/parity_open_clip.py --set digits --seeds 0 1 2 3 4 [--out runs/parity]
    python benchmarks/parity_open_clip.py --set demo --seeds 0 1 2 --clipkit optim.lr=5e-4 ...

Sets: ``digits``, scikit-learn's handwritten digits (1,797 images of 8x8 px, shipped inside the
package) upscaled to 32 px, 1,437 captioned training pairs and 360 held-out test images as a
CLIP_benchmark zero-shot set; ``demo``, the demo's image-text shards and its ``shapes`` set. The
model (ViT width 128, 4 layers; text transformer width 128, 4 layers; embed 128) and the schedule
(batch 64, AdamW lr 1e-3 wd 0.1, 50 warm-up steps then cosine, fp32, no clipping, mean/std 0.5,
random resized crop 0.9-1 bicubic, one data worker, ``--epochs`` passes) are the same on both sides.
clipkit's side runs ``experiment=demo_image_text``, so it trains as clipkit's image-text recipes do:
with the temperature warm-up over the 50 learning-rate warm-up steps (``--clipkit
loss.contrastive.scale_warmup_steps=0`` runs without it).

open_clip_train runs in an environment of its own (``--setup``: it needs ``webdataset<=0.2.86``,
and CLIP_benchmark needs numpy < 2.2). Each side's final model is written as an open_clip
``local-dir`` folder (clipkit through ``clipkit-export``, open_clip_train's last checkpoint copied
into the same layout) and scored by CLIP_benchmark in that environment, in fp32 as the models were
trained (``--no_amp``: by default CLIP_benchmark runs under bf16 autocast, on CPU too); clipkit's is
also scored by ``clipkit-eval`` (the two must agree). Printed per side: acc1 mean, spread (max - min) and values,
wall and CPU seconds of the training command. ``--clipkit KEY=VALUE`` adds overrides to clipkit's
side, for ablations; those of the model (``model.*``: towers, embedding, initial logit scale) also
shape open_clip's model config (as clipkit-export writes it), so both sides train the same model,
unless ``--open-clip-own-init`` keeps open_clip_train's own initial logit scale (ln 1/0.07); e.g.
``--clipkit model.init_logit_scale=1.9459`` starts both sides at scale 7.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".parity-venv"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = ["a handwritten digit {c}.", "a photo of the number {c}.", "the digit {c}."]
CAPTIONS = ["a handwritten {c}", "the digit {c}", "a scanned {c}", "number {c} written by hand"]
PARITY_PACKAGES = [
    "open_clip_torch==3.3.0",
    "webdataset==0.2.86",
    "clip_benchmark==1.6.2",
    "requests",
    "pandas",
    "numpy<2.2",
    "torch==2.11.*",
    "torchvision==0.26.*",
]


def setup_venv() -> None:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *PARITY_PACKAGES], check=True)


# ----------------------------------------------------------------------------------------- data
def write_digits(root: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    from clipkit.data.write import write_eval_set, write_shards

    if (root / "COMPLETE").is_file():
        return
    digits = load_digits()

    def png(pixels) -> bytes:
        image = Image.fromarray((pixels * (255 / 16)).astype("uint8")).resize((32, 32), Image.BICUBIC)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    train, test = range(0, 1437), range(1437, len(digits.target))
    write_shards(
        (
            {
                "__key__": f"d{i:05d}",
                "png": png(digits.images[i]),
                "txt": CAPTIONS[i % len(CAPTIONS)].replace("{c}", DIGIT_NAMES[digits.target[i]]),
            }
            for i in train
        ),
        root / "train",
        "digits",
        720,
    )
    write_eval_set(
        root / "eval",
        ({"__key__": f"t{i:05d}", "webp": _webp(png(digits.images[i])), "cls": int(digits.target[i])} for i in test),
        classnames=DIGIT_NAMES,
        templates=DIGIT_TEMPLATES,
        dataset_type="zeroshot_classification",
    )
    (root / "COMPLETE").write_text("")


def _webp(png: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def data_set(name: str, out: Path) -> tuple[str, int, Path, int, int]:
    """(train shard pattern, training samples, zero-shot set root, image size, patch size)."""
    if name == "digits":
        root = out / "data" / "digits"
        write_digits(root)
        return f"{root}/train/digits-{{000000..000001}}.tar", 1437, root / "eval", 32, 4
    from clipkit.data.demo import write_demo

    root = out / "data" / "demo"
    if not (root / "COMPLETE").is_file():
        write_demo(root)
    return f"{root}/train/image_text/demo-{{000000..000015}}.tar", 16000, root / "eval" / "shapes", 64, 8


# ---------------------------------------------------------------------------------------- model
def clipkit_overrides(shards: str, samples: int, image_size: int, patch: int, epochs: int) -> list[str]:
    """open_clip_train's epoch is ceil(samples / batch) steps (its loader starts the next pass to fill
    the last batch); clipkit takes the same number of steps, starting its next pass where one ends."""
    steps = epochs * math.ceil(samples / 64)
    return [
        "experiment=demo_image_text",
        "model=tiny",
        "data=webdataset",
        "eval=none",
        f"data.train.shards='{shards}'",
        f"data.train.num_samples={samples}",
        "data.train.resampled=false",
        "data.batch_size=64",
        "data.workers=1",
        "data.image.mean=[0.5,0.5,0.5]",
        "data.image.std=[0.5,0.5,0.5]",
        "data.image.train_crop_scale=[0.9,1.0]",
        "data.image.interpolation=bicubic",
        "model.embed_dim=128",
        f"model.towers.image.image_size={image_size}",
        f"model.towers.image.patch_size={patch}",
        "model.towers.image.width=128",
        "model.towers.image.layers=4",
        "model.towers.image.head_width=32",
        "model.towers.text.width=128",
        "model.towers.text.heads=4",
        "model.towers.text.layers=4",
        "model.towers.text.context_length=32",
        "optim.lr=1e-3",
        "optim.weight_decay=0.1",
        "optim.betas=[0.9,0.999]",
        "optim.eps=1e-8",
        "sched=cosine",
        "sched.warmup_steps=50",
        "trainer.grad_clip_norm=null",
        "trainer.precision=fp32",
        f"trainer.max_steps={steps}",
        "trainer.device=cpu",
        "trainer.log_every_n_steps=50",
    ]


def open_clip_model_config(overrides: list[str]) -> dict:
    """open_clip's config of the model clipkit builds from ``overrides`` (what clipkit-export writes)."""
    import torch

    from clipkit.config.compose import compose_config
    from clipkit.config.validate import check_config
    from clipkit.export.open_clip import open_clip_config
    from clipkit.models.build import build_bundle

    checked = check_config(compose_config(overrides))
    return open_clip_config(checked, build_bundle(checked, torch.device("cpu")).model)


# ----------------------------------------------------------------------------------------- runs
def timed(command: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run to completion; (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(
            command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\nsee {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_clipkit(work: Path, overrides: list[str], seed: int) -> tuple[Path, float, float]:
    bin_dir = Path(sys.executable).parent
    wall, cpu = timed(
        [str(bin_dir / "clipkit-train"), *overrides, f"seed={seed}", f"hydra.run.dir={work / 'run'}"],
        work,
        work / "train.log",
    )
    export = work / "open_clip"
    timed(
        [str(bin_dir / "clipkit-export"), f"checkpoint={work / 'run'}", "format=open_clip", f"out={export}"],
        work,
        work / "export.log",
    )
    return export, wall, cpu


def run_open_clip(
    work: Path, shards: str, samples: int, epochs: int, seed: int, model_cfg: dict
) -> tuple[Path, float, float]:
    import torch
    from safetensors.torch import save_file

    python = str(VENV / "bin" / "python")
    args = [
        python,
        "-m",
        "open_clip_train.main",
        "--train-data",
        shards,
        "--train-num-samples",
        str(samples),
        "--dataset-type",
        "webdataset",
        "--batch-size",
        "64",
        "--epochs",
        str(epochs),
        "--lr",
        "1e-3",
        "--wd",
        "0.1",
        "--beta1",
        "0.9",
        "--beta2",
        "0.999",
        "--eps",
        "1e-8",
        "--warmup",
        "50",
        "--workers",
        "1",
        "--model",
        "clipkit_parity",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--seed",
        str(seed),
        "--image-mean",
        "0.5",
        "0.5",
        "0.5",
        "--image-std",
        "0.5",
        "0.5",
        "0.5",
        "--image-interpolation",
        "bicubic",
        "--aug-cfg",
        "scale=(0.9,1.0)",
        "--zeroshot-frequency",
        "0",
        "--val-frequency",
        "0",
        "--save-frequency",
        str(epochs),
        "--report-to",
        "",
        "--log-every-n-steps",
        "50",
        "--logs",
        str(work / "logs"),
        "--name",
        "run",
    ]
    wall, cpu = timed(args, work, work / "train.log")
    checkpoint = torch.load(
        work / "logs" / "run" / "checkpoints" / f"epoch_{epochs}.pt", map_location="cpu", weights_only=False
    )
    state = {k.removeprefix("module."): v.contiguous() for k, v in checkpoint["state_dict"].items()}
    export = work / "open_clip"
    export.mkdir(exist_ok=True)
    (export / "open_clip_config.json").write_text(json.dumps(model_cfg, indent=2))
    save_file(state, str(export / "open_clip_model.safetensors"))
    shutil.rmtree(work / "logs" / "run" / "checkpoints")
    return export, wall, cpu


def clip_benchmark_acc1(export: Path, eval_root: Path, work: Path) -> float:
    out = work / "clip_benchmark.json"
    timed(
        [
            str(VENV / "bin" / "clip_benchmark"),
            "eval",
            "--model",
            f"local-dir:{export}",
            "--pretrained",
            "",
            "--dataset",
            "wds/parity",
            "--dataset_root",
            str(eval_root),
            "--task",
            "zeroshot_classification",
            "--batch_size",
            "128",
            "--num_workers",
            "0",
            "--no_amp",
            "--output",
            str(out),
        ],
        work,
        work / "clip_benchmark.log",
    )
    return json.loads(out.read_text())["metrics"]["acc1"]


def clipkit_eval_acc1(work: Path, eval_root: Path) -> float:
    out = work / "clipkit_eval"
    timed(
        [
            str(Path(sys.executable).parent / "clipkit-eval"),
            f"checkpoint={work / 'run'}",
            f"out={out}",
            f"eval.datasets.parity.root={eval_root}",
            "eval.datasets.parity.task=zeroshot_classification",
        ],
        work,
        work / "clipkit_eval.log",
    )
    return json.loads((out / "parity.json").read_text())["metrics"]["acc1"]


def summary(values: list[float]) -> str:
    spread = max(values) - min(values)
    return f"{statistics.mean(values):.3f} (spread {spread:.3f}; " + ", ".join(f"{v:.3f}" for v in values) + ")"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setup", action="store_true", help="create .parity-venv with open_clip_train")
    parser.add_argument("--set", choices=["digits", "demo"], default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, help="passes over the training set (default: 15 digits, 1 demo)")
    parser.add_argument("--sides", nargs="+", choices=["clipkit", "open_clip"], default=["clipkit", "open_clip"])
    parser.add_argument("--clipkit", nargs="*", default=[], help="extra overrides for clipkit's side")
    parser.add_argument(
        "--open-clip-own-init",
        action="store_true",
        help="open_clip's initial logit scale (ln 1/0.07) whatever model.init_logit_scale says",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "parity")
    args = parser.parse_args()
    if args.setup:
        setup_venv()
        return
    epochs = args.epochs or (15 if args.set == "digits" else 1)
    shards, samples, eval_root, image_size, patch = data_set(args.set, args.out)
    overrides = clipkit_overrides(shards, samples, image_size, patch, epochs)
    config = open_clip_model_config([*overrides, *args.clipkit])  # model overrides shape both sides' model
    if args.open_clip_own_init:
        config["model_cfg"].pop("init_logit_scale", None)
    configs = (
        Path(
            subprocess.run(
                [
                    str(VENV / "bin" / "python"),
                    "-c",
                    "import open_clip, os; print(os.path.dirname(open_clip.__file__))",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        / "model_configs"
    )
    (configs / "clipkit_parity.json").write_text(json.dumps(config["model_cfg"]))
    tag = "_".join(o.replace("/", "-").replace("=", "-") for o in args.clipkit) or "base"
    results: dict[str, dict[str, list[float]]] = {side: {"acc1": [], "wall": [], "cpu": []} for side in args.sides}
    for seed in args.seeds:
        for side in args.sides:
            own = "open_clip_own_init" if args.open_clip_own_init else "open_clip"
            work = args.out / args.set / (f"clipkit_{tag}" if side == "clipkit" else own) / f"seed{seed}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            if side == "clipkit":
                export, wall, cpu = run_clipkit(work, [*overrides, *args.clipkit], seed)
            else:
                export, wall, cpu = run_open_clip(work, shards, samples, epochs, seed, config)
            acc1 = clip_benchmark_acc1(export, eval_root, work)
            line = f"{args.set} seed {seed} {side}: acc1 {acc1:.3f}, wall {wall:.0f} s, CPU {cpu:.0f} s"
            if side == "clipkit":
                line += f" (clipkit-eval acc1 {clipkit_eval_acc1(work, eval_root):.3f})"
            print(line, flush=True)
            for key, value in (("acc1", acc1), ("wall", wall), ("cpu", cpu)):
                results[side][key].append(value)
    print(
        f"\n{args.set}, {epochs} epoch(s), seeds {args.seeds}, clipkit overrides: {args.clipkit or 'none'}, "
        f"open_clip's initial logit scale: {'its own' if args.open_clip_own_init else 'as clipkit'}"
    )
    for side, r in results.items():
        print(
            f"{side:<10} acc1 {summary(r['acc1'])}; wall {statistics.mean(r['wall']):.0f} s, "
            f"CPU {statistics.mean(r['cpu']):.0f} s"
        )


if __name__ == "__main__":
    main()
