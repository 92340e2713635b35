"""``clipkit-eval checkpoint=PATH [out=DIR] [KEY=VALUE ...]``: evaluate a saved checkpoint.

The checkpoint's own config.yaml supplies the model and the eval sets; ``KEY=VALUE`` overrides
change it (e.g. ``eval.datasets.mine.root=/data/mine eval.datasets.mine.task=retrieval``, or
``trainer.device=cpu``). Results go to ``OUT/<dataset>.json`` (default: the checkpoint's eval/).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from clipkit.cli.errors import USER_ERRORS, fail
from clipkit.errors import ConfigError

PROGRAM = "clipkit-eval"
USAGE = "usage: clipkit-eval checkpoint=PATH [out=DIR] [KEY=VALUE ...]"


def _parse(argv: List[str]) -> Tuple[str, Optional[str], List[str]]:
    checkpoint, out, overrides = None, None, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError("", f"expected KEY=VALUE, got '{arg}' ({USAGE})")
        if key == "checkpoint":
            checkpoint = value
        elif key == "out":
            out = value
        else:
            overrides.append(arg)
    if not checkpoint:
        raise ConfigError("checkpoint", f"missing ({USAGE})")
    return checkpoint, out, overrides


def evaluate_checkpoint(checkpoint: str, overrides: List[str], out: Optional[str]) -> Dict[str, Dict[str, float]]:
    from clipkit import distributed
    from clipkit.eval.runner import Evaluator
    from clipkit.saved import load_checkpoint, load_config
    from clipkit.train import checkpoint as ckpt
    from clipkit.train.precision import autocast_factory

    trainer = load_config(ckpt.resolve_checkpoint(checkpoint), overrides).cfg.trainer
    # Under torchrun, every process evaluates its share of each set.
    env = distributed.init_distributed(trainer.device, trainer.dist_backend)
    try:
        folder, checked, bundle = load_checkpoint(checkpoint, env.device, overrides)
        evaluator = Evaluator(checked.cfg.eval, bundle.eval_loaders(), bundle.tokenizer, env.device,
                              autocast_factory(checked.cfg.trainer.precision, env.device), env)
        if not evaluator.sets:
            raise ConfigError("eval.datasets", "no eval sets configured")
        step = int(ckpt.load_train_state(folder).get("step", 0))
        out_dir = (Path(out) if out else folder / "eval") if env.is_main else None
        return evaluator.run(bundle.model, step, out_dir)
    finally:
        distributed.shutdown(env)


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        checkpoint, out, overrides = _parse(sys.argv[1:] if argv is None else argv)
        results = evaluate_checkpoint(checkpoint, overrides, out)
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)
    from clipkit.train.metrics import results_table

    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(results_table(results)))


if __name__ == "__main__":
    main()
