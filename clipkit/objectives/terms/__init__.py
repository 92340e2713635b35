"""The loss terms over modality pairs, one module each: importing this package registers them all
in :data:`clipkit.objectives.terms.base.PAIR_TERMS`, in the order of their module names."""

import importlib
import pkgutil

from clipkit.plugins import load_plugins

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

load_plugins()  # towers, terms and tasks of other packages (clipkit.plugins)
