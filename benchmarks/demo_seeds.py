"""Demo results over several seeds: is a recipe change better, or was one seed lucky?

    python benchmarks/demo_seeds.py --out runs/seeds --seeds 0 1 2 \\
        --recipe tri: --recipe image_text:experiment=demo_image_text [--recipe NAME:OVERRIDE,...]

Each recipe is ``name:`` followed by comma-separated clipkit-train overrides (none: the default
demo). Every recipe x seed is a full ``clipkit-train`` run in ``OUT/<name>/seed<k>``; a finished run
is read again, not redone. Prints each run's headline metrics and wall time, then per recipe
their mean and standard deviation.

On the demo, one seed's image zero-shot acc1 moves by about +-0.02 and retrieval recall@10 by
+-0.03, so compare means over at least three seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEADLINE = [  # (eval set, metric, column title)
    ("shapes", "acc1", "shapes acc1"),
    ("scenes", "image_retrieval_recall@10", "scenes t->i R@10"),
    ("scenes", "text_retrieval_recall@10", "scenes i->t R@10"),
    ("sounds", "acc1", "sounds acc1"),
    ("sound_captions", "audio_retrieval_recall@10", "sound t->a R@10"),
    ("scene_sounds", "image_retrieval_recall@10", "scene a->i R@10"),
    ("compositions", "acc", "comp acc"),
    ("compositions", "acc_swap_colours", "comp colours"),
    ("compositions", "acc_swap_sizes", "comp sizes"),
    ("compositions", "acc_swap_positions", "comp positions"),
]


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


def run(run_dir: Path, overrides: list[str], seed: int) -> float:
    """Train (unless already done) and return the seconds it took (nan when read again)."""
    if (run_dir / "report.md").is_file():
        return float("nan")
    start = time.perf_counter()
    command = [
        str(Path(sys.executable).parent / "clipkit-train"),
        *overrides,
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
        "trainer.resume=null",
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def headline(run_dir: Path) -> dict[str, float]:
    values = {}
    for eval_set, metric, title in HEADLINE:
        path = run_dir / "eval" / f"{eval_set}.json"
        if path.is_file():
            values[title] = json.loads(path.read_text())["metrics"][metric]
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", action="append", required=True, help="NAME:OVERRIDE,OVERRIDE")
    args = parser.parse_args()
    titles = [title for _, _, title in HEADLINE]
    print(f"{'recipe':<14} {'seed':>4} " + " ".join(f"{t:>16}" for t in titles) + f" {'seconds':>8}", flush=True)
    summary = []
    for name, overrides in map(parse_recipe, args.recipe):
        results, seconds = [], []
        for seed in args.seeds:
            run_dir = args.out / name / f"seed{seed}"
            seconds.append(run(run_dir, overrides, seed))
            results.append(headline(run_dir))
            row = " ".join(f"{results[-1][t]:>16.3f}" if t in results[-1] else f"{'-':>16}" for t in titles)
            print(f"{name:<14} {seed:>4} {row} {seconds[-1]:>8.0f}", flush=True)
        cells = []
        for t in titles:
            values = [r[t] for r in results if t in r]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):>9.3f}+-{spread:.3f}" if values else f"{'-':>16}")
        summary.append(f"{name:<14} {'mean':>4} " + " ".join(cells))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
