"""The eval tasks, one module each: importing this package registers them all in
:data:`clipkit.eval.tasks.base.EVAL_TASKS`."""

import importlib
import pkgutil

from clipkit.eval.tasks.base import EVAL_TASKS, EvalTask
from clipkit.plugins import load_plugins

__all__ = ["EVAL_TASKS", "EvalTask"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

load_plugins()  # towers, terms and tasks of other packages (clipkit.plugins)
