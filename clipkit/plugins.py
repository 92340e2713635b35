"""Components from outside clipkit: a plugin is a module that registers towers, loss terms or eval
tasks in clipkit's registries (``TOWERS``, ``PAIR_TERMS``, ``EVAL_TASKS``) when imported, as
clipkit's own modules do. Plugins are named by the ``clipkit.plugins`` entry points of installed
packages (in a package's ``pyproject.toml``: ``[project.entry-points."clipkit.plugins"]
mine = "mypackage.clipkit_parts"``) and by ``CLIPKIT_PLUGINS`` (module names, comma-separated,
importable from ``sys.path``: e.g. a file ``my_parts.py`` in the working directory with
``PYTHONPATH=.``). They are imported once, when the first of those registries is, so that a
registered tower or term is a config option like clipkit's own (``model/towers/image=NAME``,
``loss.NAME.weight=1``) in every command and process, and in ``clipkit.load``.

A plugin that fails to import does not break ``import clipkit``: the failure is kept, and the
commands and ``clipkit.load`` report it as one line (:func:`check_plugins`)."""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from clipkit.errors import ClipkitError

ENTRY_POINT_GROUP = "clipkit.plugins"
ENV_VAR = "CLIPKIT_PLUGINS"

_loaded = False
_failure: PluginError | None = None
_modules: list[str] = []  # the plugin modules imported


class PluginError(ClipkitError):
    """A plugin could not be imported."""


def load_plugins() -> None:
    """Import every plugin, once (a plugin that imports a registry re-enters here: a no-op)."""
    global _loaded, _failure
    if _loaded:
        return
    _loaded = True
    named = [(f"entry point '{ep.name}' ({ep.value})", ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)]
    named += [(ENV_VAR, name.strip()) for name in os.environ.get(ENV_VAR, "").split(",") if name.strip()]
    for source, module in named:
        try:
            importlib.import_module(module.partition(":")[0])
            _modules.append(module.partition(":")[0])
        except Exception as exc:  # the plugin's own code: anything it raises is reported the same way
            _failure = PluginError(f"{source}: cannot import plugin '{module}': {type(exc).__name__}: {exc}")
            return


def check_plugins() -> None:
    """Raise the failure of a plugin, if one failed to import."""
    load_plugins()
    if _failure is not None:
        raise _failure


def loaded_plugins() -> list[str]:
    """The plugin modules imported in this process (a checkpoint's manifest lists them)."""
    load_plugins()
    return list(_modules)


def require_plugins(modules: list[str], where: object) -> None:
    """The plugin modules ``where`` (a checkpoint) was written with must be loaded to read it."""
    missing = [m for m in modules if m not in loaded_plugins()]
    if missing:
        raise PluginError(
            f"{where} was written with the plugin module(s) {', '.join(missing)}, not loaded here: name them in "
            f"{ENV_VAR} (importable from sys.path, e.g. with PYTHONPATH) or install the package that provides them"
        )
