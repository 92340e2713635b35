"""What a component's ``check()`` uses: value checks that raise :class:`ConfigError` naming the key,
and the facts about the rest of the run that a component's config may be checked against.

A leaf module: components import it, it imports no component, so configs can live beside their
code without a cycle through ``clipkit.config``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clipkit.errors import ConfigError


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    """None passes (an optional setting left out)."""
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def named_weights(key: str, weights: dict[str, float], allowed: Sequence[str], what: str, where: str) -> None:
    """Relative weights by name (e.g. loss.<term>.pair_weights): each names one of ``allowed``
    (the ``what``s of the key ``where``) and is >= 0. A weight for a missing entry often comes from
    a preset (the demo weighs its image_audio pair), so the error names the override removing it."""
    for name, weight in weights.items():
        if name not in allowed:
            raise ConfigError(
                f"{key}.{name}",
                f"not a {what} of {where} {list(allowed)}; remove the weight (~{key}.{name}) or add the {what}",
            )
        positive(f"{key}.{name}", weight, allow_zero=True)


def one_of(key: str, value: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class RunFacts:
    """The parts of a run that a component's config is checked against."""

    towers: frozenset[str]  # the modalities with a tower
    locked: frozenset[str]  # the modalities whose tower is frozen
    pairs: tuple[str, ...]  # model.pairs
    caption_sources: tuple[str, ...]  # model.caption.sources
