"""Reporting user errors as one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from clipkit.config.omegaconf_errors import omegaconf_problem
from clipkit.errors import ClipkitError

USER_ERRORS = (ClipkitError, HydraException, OmegaConfBaseException)


def _omegaconf_cause(exc: BaseException) -> OmegaConfBaseException | None:
    while exc is not None:
        if isinstance(exc, OmegaConfBaseException):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


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
        return str(omegaconf_problem(cause))
    return _hydra_message(exc)


def fail(program: str, exc: BaseException) -> NoReturn:
    print(f"{program}: error: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)
