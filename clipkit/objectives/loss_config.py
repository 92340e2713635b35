"""``loss``: one field per registered pair term (its ``loss.<name>`` group), the caption term, and
the anchors. Built from the registry, so a new term's module is all it takes to configure it."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

from clipkit.config.checks import RunFacts
from clipkit.errors import ConfigError
from clipkit.objectives.caption_loss import CaptionLossConfig
from clipkit.objectives.terms.base import PAIR_TERMS, PairTermConfig  # the package registers every term
from clipkit.pairs import split_pair


@dataclass
class _LossConfigBase:
    def pair_terms(self) -> dict[str, PairTermConfig]:
        """Every pair term's config by name, in registration order."""
        return {name: getattr(self, name) for name, _ in PAIR_TERMS.items()}

    def check(self, run: RunFacts) -> None:
        for name, term in self.pair_terms().items():
            term.check(f"loss.{name}", run)
        self.caption.check("loss.caption", run)
        _check_anchors(self.anchors, run)
        if not any(term.weight > 0 for term in (*self.pair_terms().values(), self.caption)):
            raise ConfigError("loss", "every loss term has weight 0; nothing would train")


LossConfig = make_dataclass(
    "LossConfig",
    [
        *((name, entry.config_class, field(default_factory=entry.config_class)) for name, entry in PAIR_TERMS.items()),
        ("caption", CaptionLossConfig, field(default_factory=CaptionLossConfig)),
        # pair -> the modality its terms treat as a fixed target: no gradient flows into that side
        # from this pair, e.g. {image_audio: image} binds audio to the image space without moving
        # it (ImageBind's image anchor, here learned in the same run).
        ("anchors", dict[str, str], field(default_factory=dict)),
    ],
    bases=(_LossConfigBase,),
)
LossConfig.__module__ = __name__  # make_dataclass's module= needs Python 3.12


def _check_anchors(anchors: dict[str, str], run: RunFacts) -> None:
    pairs = list(run.pairs)
    for pair, modality in anchors.items():
        if pair not in pairs:
            raise ConfigError(
                f"loss.anchors.{pair}",
                f"not a pair of model.pairs {pairs}; remove the anchor (~loss.anchors.{pair}) or add the pair",
            )
        if modality not in split_pair(pair):
            raise ConfigError(
                f"loss.anchors.{pair}", f"{modality!r} is not one of the pair's modalities {list(split_pair(pair))}"
            )
    for modality in sorted({m for pair in pairs for m in split_pair(pair)}):
        trained_by = [p for p in pairs if modality in split_pair(p) and anchors.get(p) != modality]
        if not trained_by and modality not in run.caption_sources and modality not in run.locked:
            raise ConfigError(
                "loss.anchors",
                f"every pair anchors {modality}, so its tower would get no "
                f"gradient; freeze it with model.towers.{modality}.lock=true instead",
            )
