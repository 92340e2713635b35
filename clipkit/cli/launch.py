"""How a clipkit command starts: its imports without garbage collection, then the heap frozen.

Importing torch, torchvision, timm and open_clip creates about a million objects that Python's
collector tracks and that live as long as the process. Every full collection walks all of them:
on 2 cores, the full collections set off while importing cost ~0.8 s and the one at interpreter
exit ~0.9 s of a one-step ``clipkit-train`` (~7 s). Frozen (``gc.freeze``), they are never walked
again, and forked data workers do not copy their pages by writing the collector's bookkeeping
(the use the ``gc`` documentation gives for it). Imports make no garbage worth collecting.
"""

from __future__ import annotations

import functools
import gc
import importlib
from collections.abc import Callable


def run_main(main: Callable[[], None]) -> None:
    """Run a command's ``main`` with what is already imported frozen (``python -m clipkit.cli.X``)."""
    gc.freeze()
    main()


def _run(module: str) -> None:
    gc.disable()
    try:
        main = importlib.import_module(module).main
    finally:
        gc.enable()
    run_main(main)


# The console scripts (pyproject.toml): their imports happen here, with the collector paused.
train = functools.partial(_run, "clipkit.cli.train")
evaluate = functools.partial(_run, "clipkit.cli.eval")
export = functools.partial(_run, "clipkit.cli.export")
data = functools.partial(_run, "clipkit.cli.data")
