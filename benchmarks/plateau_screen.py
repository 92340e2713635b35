"""How often the parity model stays on the initial loss plateau: a quick screen before full runs.

    python benchmarks/plateau_screen.py --data runs/parity/data/digits --out runs/screen \\
        --seeds 0 1 2 3 4 5 6 7 8 9 --set model.init_logit_scale=1.9459   # ln 7

Trains clipkit on the parity harness's digits set (``parity_open_clip.py`` writes it under
``--out``/data/digits) with the harness's model and optimiser, but a constant learning rate after
the 50 warm-up steps and 120 steps in all (~50 s a seed on 2 cores), and prints the loss at steps
50, 80, 100 and 120 per seed. A run still near ln 64 = 4.16 at step 100 is one that the full
schedule may leave in a poor solution. Extra ``--set KEY=VALUE`` overrides name the variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_open_clip import clipkit_overrides  # noqa: E402

STEPS_SHOWN = (50, 80, 100, 120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="the harness's digits folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="the variant's overrides")
    args = parser.parse_args()
    shards = str(args.data / "train" / "digits-{000000..000001}.tar")
    fixed = [
        o
        for o in clipkit_overrides(shards, 1437, 32, 4, 15)
        if not o.startswith(("trainer.max_steps", "sched", "trainer.log_every"))
    ]
    fixed += [
        "trainer.max_steps=120",
        "sched=constant",
        "sched.warmup_steps=50",
        "trainer.log_every_n_steps=10",
        "trainer.ckpt_every_n_steps=1000",
    ]
    train = Path(sys.executable).parent / "clipkit-train"
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        subprocess.run(
            [str(train), *fixed, *args.overrides, f"seed={seed}", f"hydra.run.dir={run_dir}"],
            check=True,
            capture_output=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        loss = {r["step"]: r["loss/total"] for r in records if "loss/total" in r}
        print(
            f"seed {seed}: loss at steps {STEPS_SHOWN}: " + " ".join(f"{loss[s]:.2f}" for s in STEPS_SHOWN), flush=True
        )


if __name__ == "__main__":
    main()
