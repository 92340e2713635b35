"""``KEY=VALUE`` command lines (clipkit-eval, clipkit-export): the command's own keys, and config
overrides for everything else."""

from __future__ import annotations

from collections.abc import Collection

from clipkit.errors import ConfigError


def asks_for_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def split_arguments(argv: list[str], own: Collection[str], usage: str) -> tuple[dict[str, list[str]], list[str]]:
    """The values of the command's ``own`` keys, each in the order given (a key may repeat), and
    the other arguments, as config overrides in their order."""
    values: dict[str, list[str]] = {key: [] for key in own}
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("~"):  # Hydra's removal: ~KEY
            overrides.append(arg)
        elif not sep:
            raise ConfigError("", f"expected KEY=VALUE, got '{arg}' ({usage})")
        elif key in values:
            values[key].append(value)
        else:
            overrides.append(arg)
    return values, overrides
