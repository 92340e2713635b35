"""The modalities, one registered spec each: importing this package registers them all in
:data:`clipkit.modalities.base.MODALITIES`."""

import importlib
import pkgutil

from clipkit.modalities.base import MODALITIES, ModalityFeed, ModalitySpec

__all__ = ["MODALITIES", "ModalityFeed", "ModalitySpec"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
