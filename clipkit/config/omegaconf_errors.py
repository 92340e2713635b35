"""OmegaConf's errors as one line naming the full key, with a suggestion for a misspelt key."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from clipkit.config.checks import did_you_mean
from clipkit.errors import ConfigError


def omegaconf_problem(exc: OmegaConfBaseException, prefix: str = "", schema: type | None = None) -> ConfigError:
    """``prefix``: the dotted key of the node the error was raised in; ``schema``: the dataclass
    that node was checked against (default: the one OmegaConf names)."""
    key = getattr(exc, "full_key", "") or ""
    message = str(getattr(exc, "msg", "") or exc).strip().splitlines()[0]
    message = message.replace("is not in struct", "is not a known key")
    schema = schema or getattr(exc, "object_type", None)
    unknown_key = isinstance(exc, (ConfigKeyError, ConfigAttributeError)) or "not a known key" in message
    if unknown_key and is_dataclass(schema) and key:
        message += did_you_mean(key.rpartition(".")[2], [f.name for f in fields(schema)])
    return ConfigError(".".join(p for p in (prefix, key) if p), message)
