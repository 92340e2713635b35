"""clipkit: CLIP-style pretraining over images, text and audio. ``clipkit.load(path)`` opens a
trained model (see :mod:`clipkit.api`)."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that `import clipkit.cli.train` does not pay for the API's imports.
    if name in ("load", "ClipkitModel"):
        from clipkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'clipkit' has no attribute '{name}'")
