"""Reporting user errors as one line on stderr with exit status 2, never a traceback."""
from __future__ import annotations

import sys
from typing import NoReturn, Optional

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from clipkit.config.validate import did_you_mean
from clipkit.errors import ClipkitError

USER_ERRORS = (ClipkitError, HydraException, OmegaConfBaseException)


def _omegaconf_cause(exc: BaseException) -> Optional[OmegaConfBaseException]:
    while exc is not None:
        if isinstance(exc, OmegaConfBaseException):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _suggestion(exc: OmegaConfBaseException) -> str:
    """' (did you mean ...?)' for a misspelt key, from the keys the schema has at that place."""
    full_key = getattr(exc, "full_key", "") or ""
    if not isinstance(exc, (ConfigKeyError, ConfigAttributeError)) or not full_key:
        return ""
    from clipkit.config.schema import ClipkitConfig

    parent_path, _, key = full_key.rpartition(".")
    parent = OmegaConf.structured(ClipkitConfig)
    if parent_path:
        parent = OmegaConf.select(parent, parent_path, default=None)
    if not isinstance(parent, DictConfig):
        return ""
    return did_you_mean(key, [str(k) for k in parent.keys()])


def _hydra_message(exc: BaseException) -> str:
    """Hydra's multi-line messages, folded: the problem, then the options it lists, if any."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    if len(lines) > 2 and lines[1].startswith("Available options"):
        return f"{lines[0]} ({lines[1].rstrip(':').lower()}: {', '.join(lines[2:])})"
    return "; ".join(lines)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, ClipkitError):
        return str(exc)
    cause = _omegaconf_cause(exc)
    if cause is not None:
        message = str(getattr(cause, "msg", "") or cause).strip().splitlines()[0]
        message = message.replace("is not in struct", "is not a known key")
        key = getattr(cause, "full_key", "") or ""
        return f"{key}: {message}{_suggestion(cause)}" if key else message
    return _hydra_message(exc)


def fail(program: str, exc: BaseException) -> NoReturn:
    print(f"{program}: error: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)
