"""``clipkit-eval checkpoint=PATH [checkpoint=PATH ...] [out=DIR] [KEY=VALUE ...]``: evaluate
saved checkpoints.

The checkpoint's own config.yaml supplies the model and the eval sets; ``KEY=VALUE`` overrides
change it (e.g. ``eval.datasets.mine.root=/data/mine eval.datasets.mine.task=retrieval``, or
``trainer.device=cpu``), and ``eval=NAME`` puts a shipped eval preset (``demo``) in its place.
Results go to ``OUT/<dataset>.json`` with ``OUT/report.md`` and its figures (default OUT: the
checkpoint's eval/). With several checkpoints, each is evaluated into ``OUT/<run>_<step>/`` and
``OUT/comparison.md`` holds one table of them all.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from clipkit.cli.arguments import asks_for_help, split_arguments
from clipkit.cli.errors import USER_ERRORS, fail
from clipkit.cli.launch import run_main
from clipkit.errors import ConfigError

PROGRAM = "clipkit-eval"
USAGE = "usage: clipkit-eval checkpoint=PATH [checkpoint=PATH ...] [out=DIR] [KEY=VALUE ...]"


def _parse(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    values, overrides = split_arguments(argv, ("checkpoint", "out"), USAGE)
    checkpoints, out = values["checkpoint"], (values["out"][-1] if values["out"] else None)
    if not checkpoints:
        raise ConfigError("checkpoint", f"missing ({USAGE})")
    if len(checkpoints) > 1 and not out:
        raise ConfigError("out", f"several checkpoints need out=DIR for their comparison ({USAGE})")
    return checkpoints, out, overrides


def evaluate_checkpoint(checkpoint: str, overrides: list[str], out: str | None) -> dict[str, dict[str, float]]:
    from clipkit import distributed
    from clipkit.data.text_length import inert_multiple
    from clipkit.eval.report import write_report
    from clipkit.eval.runner import Evaluator
    from clipkit.saved import load_checkpoint, load_config
    from clipkit.train import checkpoint as ckpt
    from clipkit.train.precision import autocast_factory

    trainer = load_config(ckpt.resolve_checkpoint(checkpoint), overrides).cfg.trainer
    # Under torchrun, every process evaluates its share of each set.
    env = distributed.init_distributed(trainer.device, trainer.dist_backend)
    try:
        folder, checked, bundle = load_checkpoint(checkpoint, env.device, overrides)
        evaluator = Evaluator(
            checked.cfg.eval,
            bundle.eval_loaders(),
            bundle.tokenizer,
            env.device,
            autocast_factory(checked.cfg.trainer.precision, env.device),
            env,
            inert_multiple(checked.cfg.eval.text_pad_multiple, checked.towers.get("text")),
        )
        if not evaluator.sets:
            raise ConfigError(
                "eval.datasets",
                "no eval sets configured; pick a preset (eval=demo) or name a set "
                "(eval.datasets.NAME.root=DIR eval.datasets.NAME.task=zeroshot_classification)",
            )
        step = ckpt.checkpoint_step(folder)
        out_dir = Path(out) if out else folder / "eval"
        results = evaluator.run(bundle.model, step, out_dir if env.is_main else None)
        if env.is_main:
            write_report(
                out_dir,
                f"clipkit eval: {folder}",
                results,
                evaluator.pairs,
                folder.parent.parent / "metrics.jsonl",
                [f"- step: {step}", ""],
            )
        return results
    finally:
        distributed.shutdown(env)


def _label(checkpoint: str, taken: dict[str, object]) -> str:
    """'<run folder>_<step folder>', unique among the labels taken."""
    from clipkit.train import checkpoint as ckpt

    folder = ckpt.resolve_checkpoint(checkpoint)
    label = base = f"{folder.parent.parent.name}_{folder.name}"
    suffix = 2
    while label in taken:
        label, suffix = f"{base}_{suffix}", suffix + 1
    return label


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if asks_for_help(argv):
        print(__doc__.strip().replace("``", ""))
        return
    try:
        checkpoints, out, overrides = _parse(argv)
        if len(checkpoints) == 1:
            every = {checkpoints[0]: evaluate_checkpoint(checkpoints[0], overrides, out)}
        else:
            every = {}
            for checkpoint in checkpoints:
                label = _label(checkpoint, every)
                every[label] = evaluate_checkpoint(checkpoint, overrides, str(Path(out) / label))
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)
    from clipkit.eval.report import comparison_table
    from clipkit.train.metrics import results_table

    if int(os.environ.get("RANK", "0")) != 0:
        return
    if len(every) == 1:
        print("\n".join(results_table(next(iter(every.values())))))
    else:
        table = comparison_table(every)
        Path(out, "comparison.md").write_text("# clipkit eval: comparison\n\n" + "\n".join(table) + "\n")
        print("\n".join(table))


if __name__ == "__main__":
    run_main(main)
