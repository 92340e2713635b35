"""Bind a new audio tower to a frozen image+text model on the demo (ImageBind's recipe), over seeds.

    python benchmarks/bind_audio_demo.py --out runs/bind --seeds 0 1 2 [--base tri --base image_text]

For each base and seed: train the base run, export it with ``clipkit-export format=open_clip`` (its
image and text towers only), then train ``experiment=demo_bind_audio`` from that export. Bases:

- ``tri``: the default tri-modal demo, whose text tower has read the sound captions; its own audio
  results are the ones the bound audio tower is measured against;
- ``image_text``: ``experiment=demo_image_text``, whose text tower has read only the shapes'
  captions.

Prints each run's headline metrics and wall time, whether the bound run's image results (every
metric of the shapes and scenes sets) equal its base's exactly, and per recipe mean and spread.
Finished runs are read again, not redone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from demo_seeds import HEADLINE, headline, run

BASES = {"tri": [], "image_text": ["experiment=demo_image_text"]}
IMAGE_SETS = ("shapes", "scenes")


def export(run_dir: Path, out: Path) -> None:
    if (out / "open_clip_config.json").is_file():
        return
    command = [
        str(Path(sys.executable).parent / "clipkit-export"),
        f"checkpoint={run_dir}",
        "format=open_clip",
        f"out={out}",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def image_metrics(run_dir: Path) -> dict[str, dict]:
    return {name: json.loads((run_dir / "eval" / f"{name}.json").read_text())["metrics"] for name in IMAGE_SETS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", action="append", choices=sorted(BASES), help="default: both")
    args = parser.parse_args()
    titles = [title for _, _, title in HEADLINE]
    print(
        f"{'run':<18} {'seed':>4} " + " ".join(f"{t:>16}" for t in titles) + f" {'seconds':>8} {'image results':>14}",
        flush=True,
    )
    rows: dict[str, list[dict[str, float]]] = {}
    for base in args.base or list(BASES):
        for seed in args.seeds:
            base_dir = args.out / base / f"seed{seed}"
            bound_dir = args.out / f"{base}_bound" / f"seed{seed}"
            base_seconds = run(base_dir, BASES[base], seed)
            export(base_dir, args.out / f"{base}_export" / f"seed{seed}")
            bound_seconds = run(
                bound_dir,
                ["experiment=demo_bind_audio", f"model.init.open_clip={args.out / f'{base}_export' / f'seed{seed}'}"],
                seed,
            )
            same = "equal" if image_metrics(bound_dir) == image_metrics(base_dir) else "DIFFERENT"
            for name, run_dir, seconds, note in (
                (base, base_dir, base_seconds, ""),
                (f"{base}_bound", bound_dir, bound_seconds, same),
            ):
                values = headline(run_dir)
                rows.setdefault(name, []).append(values)
                cells = " ".join(f"{values[t]:>16.3f}" if t in values else f"{'-':>16}" for t in titles)
                print(f"{name:<18} {seed:>4} {cells} {seconds:>8.0f} {note:>14}", flush=True)
    for name, results in rows.items():
        cells = []
        for t in titles:
            values = [r[t] for r in results if t in r]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):>9.3f}+-{spread:.3f}" if values else f"{'-':>16}")
        print(f"{name:<18} {'mean':>4} " + " ".join(cells))


if __name__ == "__main__":
    main()
