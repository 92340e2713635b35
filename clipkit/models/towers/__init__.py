"""Tower registry. Importing this package registers every built-in tower."""

from clipkit.models.towers import audio, image, text  # noqa: F401  (registration side effect)
from clipkit.models.towers.base import TOWERS, Tower, TowerConfig
from clipkit.plugins import load_plugins

__all__ = ["TOWERS", "Tower", "TowerConfig"]

load_plugins()  # towers, terms and tasks of other packages (clipkit.plugins)
