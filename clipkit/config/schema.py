"""Typed schema of the whole configuration, one dataclass per config group.

Hydra merges the YAML groups under ``clipkit/conf`` into these dataclasses, so a misspelt key or a
value of the wrong type is rejected while the config is composed, before any work starts. Tower
configs are the one polymorphic part: their fields depend on the registry entry that ``name``
selects, so ``model.towers`` is an open mapping here and each entry is checked against its
registered dataclass in :mod:`clipkit.config.validate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


# ----------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    embed_dim: int = 512
    # name -> tower config; each needs a `name:` naming a registry entry (see clipkit.registry).
    towers: Dict[str, Any] = field(default_factory=dict)
    # Modality pairs trained contrastively, written "a_b"; each gets its own learnable logit scale.
    pairs: List[str] = field(default_factory=lambda: ["image_text"])
    init_logit_scale: float = 2.6592600369262695  # log(1 / 0.07), as CLIP
    max_logit_scale: float = 100.0


# ------------------------------------------------------------------------------------------ data
@dataclass
class TrainDataConfig:
    # A brace pattern ("dir/train-{000000..000099}.tar"), a list of patterns, or a list of sources
    # each with `shards` and `weight` (mixed by weight).
    shards: Any = MISSING
    # Samples per epoch over all processes. Required with `resampled` or `trainer.epochs`, unless a
    # sizes.json beside the shards gives it (open_clip's convention).
    num_samples: Optional[int] = None
    resampled: bool = False
    shuffle_buffer: int = 1000


@dataclass
class ImageTransformConfig:
    mean: List[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: List[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest
    resize_mode: str = "shortest"  # shortest | longest | squash (eval resize, as open_clip)
    # RandomResizedCrop scale range for training; eval uses resize + center crop.
    train_crop_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])


@dataclass
class SampleKeysConfig:
    """Which file extensions in a webdataset sample carry which modality."""

    image: List[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    text: List[str] = field(default_factory=lambda: ["txt", "json"])
    audio: List[str] = field(default_factory=lambda: ["flac", "wav", "mp3", "ogg"])
    caption_field: str = "caption"  # the field holding the caption in a `json` member


@dataclass
class DataConfig:
    train: TrainDataConfig = field(default_factory=TrainDataConfig)
    batch_size: int = 64  # per process
    workers: int = 2
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    keys: SampleKeysConfig = field(default_factory=SampleKeysConfig)
    # When set, the built-in demo data set is generated here first if it is absent.
    demo_root: Optional[str] = None


# ------------------------------------------------------------------------------------------ loss
@dataclass
class ContrastiveLossConfig:
    weight: float = 1.0
    # Across processes: each scores its own rows against all gathered columns (B x N logits).
    # false: every process scores the full N x N matrix; same gradients, more memory.
    local_loss: bool = True
    # Relative weight per pair of model.pairs (e.g. {audio_text: 0.5}); pairs not listed weigh 1.
    pair_weights: Dict[str, float] = field(default_factory=dict)


@dataclass
class LossConfig:
    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)


# ----------------------------------------------------------------------------------- optim/sched
@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # final lr as a fraction of optim.lr


# --------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    max_steps: Optional[int] = None
    epochs: Optional[int] = None
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda (each process takes the GPU of its local rank)
    dist_backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    accum_steps: int = 1
    grad_clip_norm: Optional[float] = 1.0
    log_every_n_steps: int = 10
    ckpt_every_n_steps: int = 500
    keep_last_k: int = 3
    resume: Optional[str] = "auto"  # auto | PATH (a checkpoint folder) | null


# ---------------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    console: bool = True
    wandb: bool = False
    wandb_project: str = "clipkit"
    wandb_mode: str = "offline"  # offline | online | disabled; offline never needs the network
    tensorboard: bool = False


# ------------------------------------------------------------------------------------------ eval
@dataclass
class EvalDatasetConfig:
    root: str = MISSING
    task: str = "zeroshot_classification"  # zeroshot_classification | retrieval
    modality: str = "image"  # what the samples are: image | audio
    split: str = "test"
    # retrieval only: what the items are matched with: text (the captions) or the other
    # modality the samples carry (image <-> audio retrieval)
    against: str = "text"


@dataclass
class EvalConfig:
    every_n_steps: int = 0  # 0: only at the end of training
    batch_size: int = 256
    workers: int = 0
    datasets: Dict[str, EvalDatasetConfig] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ root
@dataclass
class ClipkitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = "clipkit"  # run name (loggers); recipes in conf/experiment/ set it
    seed: int = 0
