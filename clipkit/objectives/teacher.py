"""The frozen teacher of ``loss.distill``: a clipkit checkpoint, or an open_clip model on disk.

``loss.distill.teacher`` names a clipkit run or checkpoint folder (any of its pairs can be
distilled: a tri-modal teacher teaches audio too), an open_clip ``local-dir`` folder (its
``open_clip_config.json`` gives the architecture), or an open_clip weights file (``epoch_N.pt``,
``.bin``, ``.safetensors``) with ``loss.distill.teacher_arch`` naming its architecture in open_clip's
zoo. The teacher sees the student's batch as it is, so both must take the same inputs: image size,
normalisation and text context are checked before training starts.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from clipkit.config.schema import DataConfig, ImageTransformConfig
from clipkit.config.validate import CheckedConfig
from clipkit.errors import ConfigError
from clipkit.modalities import MODALITIES
from clipkit.modalities.image import IMAGE
from clipkit.modalities.text import TEXT
from clipkit.models.multimodal import MultiModalModel, PairParameters, build_model
from clipkit.models.open_clip_init import CONFIG_FILE, load_open_clip_init
from clipkit.models.zoo import ArchRefused, arch_towers, towers_from_model_config
from clipkit.objectives.terms.distill import DistillLossConfig

log = logging.getLogger(__name__)

KEY = "loss.distill.teacher"


@dataclass
class Teacher:
    model: MultiModalModel  # frozen, in eval mode
    inputs: dict[str, tuple]  # per modality, what the teacher's tower takes (compared with the student's)

    @property
    def pairs(self) -> list[str]:
        return self.model.pairs

    @torch.no_grad()
    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalised embeddings of every row (rows lacking a modality give values that the
        objective's masks leave unscored) for the modalities the teacher has."""
        return {
            m: F.normalize(self.model.towers[m](inputs[m]).float(), dim=-1)
            for m in self.model.modalities
            if m in inputs
        }

    def logit_scale(self, pair: str) -> torch.Tensor:
        return self.model.logit_scale(pair).detach()


def _is_clipkit(path: Path) -> bool:
    return (path / "checkpoints").is_dir() or (path / "manifest.json").is_file() or (path / "config.yaml").is_file()


def model_inputs(checked: CheckedConfig) -> dict[str, tuple]:
    """Per modality, what the model's tower takes (its spec's signature: image size, mean and std;
    text context; audio rate and samples)."""
    return {m: MODALITIES.get(m).build().signature(tower, checked.cfg.data) for m, tower in checked.towers.items()}


def _from_clipkit(path: Path, device: torch.device) -> Teacher:
    from clipkit.saved import load_checkpoint  # the teacher's own config and weights

    _, checked, bundle = load_checkpoint(str(path), device)
    return Teacher(bundle.model, model_inputs(checked))


def _from_open_clip(path: Path, cfg: DistillLossConfig, device: torch.device) -> Teacher:
    config_file = path / CONFIG_FILE
    if not path.is_dir() and not cfg.teacher_arch:
        raise ConfigError(
            "loss.distill.teacher_arch",
            f"{path} is an open_clip weights file without its config: "
            "name its architecture (an open_clip.list_models() name)",
        )
    try:
        if path.is_dir():
            saved = json.loads(config_file.read_text()) if config_file.is_file() else {}
            if "model_cfg" not in saved:
                raise ConfigError(
                    KEY,
                    f"{path} is neither a clipkit checkpoint nor an open_clip local-dir folder "
                    f"(no config.yaml, no {config_file.name} with a model_cfg)",
                )
            towers, preprocess = towers_from_model_config(saved["model_cfg"]), saved.get("preprocess_cfg", {})
        else:
            towers, preprocess = arch_towers(cfg.teacher_arch), {}
    except (ArchRefused, KeyError) as exc:
        raise ConfigError(KEY, f"clipkit cannot build the teacher's architecture: {exc}") from None
    own = {IMAGE: towers.image, TEXT: towers.text}  # an open_clip CLIP: its visual and text towers
    model = build_model(towers.embed_dim, own, ["image_text"], PairParameters(contrastive_scale=math.log(1 / 0.07)))
    load_open_clip_init(model, str(path))
    data = DataConfig(
        image=ImageTransformConfig(
            mean=list(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=list(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        )
    )
    inputs = {m: MODALITIES.get(m).build().signature(tower, data) for m, tower in own.items()}
    return Teacher(model.to(device), inputs)


def load_teacher(cfg: DistillLossConfig, student: CheckedConfig, device: torch.device) -> Teacher:
    """The frozen teacher; a ConfigError when it cannot teach this student (no pair in common,
    other inputs)."""
    path = Path(cfg.teacher).expanduser()
    teacher = _from_clipkit(path, device) if _is_clipkit(path) else _from_open_clip(path, cfg, device)
    teacher.model.requires_grad_(False)
    teacher.model.eval()
    _check_fits(teacher, student)
    log.info(
        "distilling %s from the teacher %s", ", ".join(p for p in student.cfg.model.pairs if p in teacher.pairs), path
    )
    return teacher


def _check_fits(teacher: Teacher, student: CheckedConfig) -> None:
    shared = [p for p in student.cfg.model.pairs if p in teacher.pairs]
    if not shared:
        raise ConfigError(
            KEY,
            f"the teacher has none of the student's pairs (teacher: {', '.join(teacher.pairs)}; "
            f"student: {', '.join(student.cfg.model.pairs)})",
        )
    own = model_inputs(student)
    for modality in {m for pair in shared for m in pair.split("_")}:
        if teacher.inputs.get(modality) != own.get(modality):
            raise ConfigError(
                KEY,
                f"the teacher's {modality} inputs {teacher.inputs.get(modality)} differ from the "
                f"student's {own.get(modality)} (image: size, mean, std; text: context; audio: "
                "rate, samples); the teacher sees the student's batch as it is",
            )
