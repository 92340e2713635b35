"""Typed schema of the whole configuration, one dataclass per config group.

Hydra merges the YAML groups under ``clipkit/conf`` into these dataclasses, so a misspelt key or a
value of the wrong type is rejected while the config is composed, before any work starts. Tower
configs are the one polymorphic part: their fields depend on the registry entry that ``name``
selects, so ``model.towers`` is an open mapping here and each entry is checked against its
registered dataclass in :mod:`clipkit.config.validate`.

A component's own config (a loss term, the caption head, generation, the schedule, an eval set, ...)
lives beside the component's code with its ``check()``; this module assembles the groups from them
and re-exports them (``X as X`` where it only re-exports), so every group's fields can be found here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from clipkit.config.checks import one_of, positive
from clipkit.data.decode import SampleKeysConfig
from clipkit.data.negatives import HardNegativesConfig as HardNegativesConfig
from clipkit.data.transforms import ImageTransformConfig
from clipkit.errors import ConfigError
from clipkit.eval.datasets import EvalDatasetConfig as EvalDatasetConfig
from clipkit.models.caption import CaptionHeadConfig
from clipkit.models.generate import GenerationConfig
from clipkit.objectives.caption_loss import CaptionLossConfig as CaptionLossConfig
from clipkit.objectives.loss_config import LossConfig
from clipkit.objectives.terms.base import PairTermConfig as PairTermConfig
from clipkit.objectives.terms.contrastive import ContrastiveLossConfig as ContrastiveLossConfig
from clipkit.objectives.terms.distill import DistillLossConfig as DistillLossConfig
from clipkit.objectives.terms.geometry import AlignmentLossConfig as AlignmentLossConfig
from clipkit.objectives.terms.geometry import CrossUniformityLossConfig as CrossUniformityLossConfig
from clipkit.objectives.terms.geometry import UniformityLossConfig as UniformityLossConfig
from clipkit.objectives.terms.sigmoid import SigmoidLossConfig as SigmoidLossConfig
from clipkit.train.ema import EMAConfig
from clipkit.train.layer_decay import LayerDecayConfig as LayerDecayConfig
from clipkit.train.metrics import LoggerConfig
from clipkit.train.mirror import check_mirror
from clipkit.train.optim import OptimConfig, SchedConfig
from clipkit.train.parallel import FSDPConfig
from clipkit.train.precision import PRECISIONS


# ----------------------------------------------------------------------------------------- model
@dataclass
class ModelInitConfig:
    """Weights a new run starts from (a resumed run takes its checkpoint's instead)."""

    # An open_clip model on disk: a local-dir folder (as clipkit-export writes it), a training
    # checkpoint (epoch_N.pt), or an open_clip_pytorch_model.bin / open_clip_model.safetensors file.
    # Its image and text towers, projections and logit scale (SigLIP: and bias) load exactly.
    open_clip: str | None = None
    # A clipkit run or checkpoint folder (either layout): the weights its evaluation and export use
    # (the moving average where it kept one). A new run of its own, unlike trainer.resume.
    clipkit: str | None = None
    # Which towers to take (null: all it can fill: open_clip's image and text; from clipkit, every
    # tower of this model that the checkpoint has). [image] starts LiT (a pretrained image tower, a
    # new text tower); a pair's logit scale comes with both its towers.
    towers: list[str] | None = None

    def check(self, key: str, towers: frozenset[str]) -> None:
        if self.open_clip and self.clipkit:
            raise ConfigError(key, "give one of model.init.open_clip and model.init.clipkit")
        unknown = [t for t in self.towers or [] if t not in towers]
        if unknown or self.towers == []:
            asked = ", ".join(unknown) or "no tower"
            raise ConfigError(f"{key}.towers", f"{asked} to take; this model has {', '.join(sorted(towers))}")
        if self.open_clip and not set(self.towers or ()) <= {"image", "text"}:
            raise ConfigError(f"{key}.towers", "an open_clip model fills the image and text towers only")

    def taken(self, towers: frozenset[str]) -> set[str]:
        """The towers the init fills (before it reads what the checkpoint holds)."""
        if self.open_clip:
            return set(self.towers or ("image", "text"))
        return set(self.towers or towers) if self.clipkit else set()


@dataclass
class ModelConfig:
    # open_clip's architecture the towers were filled from (model=open_clip model.arch=NAME);
    # informational once composed: the towers below are what is built.
    arch: str | None = None
    embed_dim: int = 512
    # name -> tower config; each needs a `name:` naming a registry entry (see clipkit.registry).
    towers: dict[str, Any] = field(default_factory=dict)
    # Modality pairs trained contrastively, written "a_b"; each gets its own learnable logit scale.
    pairs: list[str] = field(default_factory=lambda: ["image_text"])
    init_logit_scale: float = 2.6592600369262695  # log(1 / 0.07), as CLIP
    max_logit_scale: float = 100.0
    caption: CaptionHeadConfig = field(default_factory=CaptionHeadConfig)
    init: ModelInitConfig = field(default_factory=ModelInitConfig)


# ------------------------------------------------------------------------------------------ data
@dataclass
class TrainDataConfig:
    # A brace pattern ("dir/train-{000000..000099}.tar"), a list of patterns, or a list of sources
    # each with `shards` and `weight` (mixed by weight).
    shards: Any = MISSING
    # Samples per epoch over all processes. Required with `resampled` or `trainer.epochs`, unless a
    # sizes.json beside the shards gives it (open_clip's convention).
    num_samples: int | None = None
    resampled: bool = False
    shuffle_buffer: int = 1000


@dataclass
class DataConfig:
    train: TrainDataConfig = field(default_factory=TrainDataConfig)
    batch_size: int = 64  # per process
    workers: int = 2
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    # Where training JPEGs are decoded: cpu (in the data workers) | cuda (on the training GPU, with
    # nvJPEG: for hosts short of CPU cores; see clipkit.data.device_decode)
    decode_device: str = "cpu"
    keys: SampleKeysConfig = field(default_factory=SampleKeysConfig)
    # null: every caption is padded to the text tower's context length. M: a batch's tokens are cut
    # after its longest caption, rounded up to a multiple of M (open_clip's --text-pad-multiple); the
    # text tower then works on fewer positions and computes the same (see clipkit.data.text_length)
    text_pad_multiple: int | None = None
    # null: batches as the samples come. N: each data worker orders pools of N raw samples by caption
    # length and makes its batches from those groups, so that text_pad_multiple pays on web data
    # whose long captions would otherwise reach every batch (open_clip's --length-bucketing,
    # --bucket-pool; see clipkit.data.length_buckets). A multiple of batch_size
    bucket_pool: int | None = None
    # When set, the built-in demo data set is generated here first if it is absent.
    demo_root: str | None = None


# --------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    max_steps: int | None = None
    epochs: int | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda (each process takes the GPU of its local rank)
    dist_backend: str = "auto"  # auto (nccl on GPU, plus gloo for host values; gloo on CPU) | nccl | gloo
    compile: bool = False  # torch.compile each tower (inductor; GPU kernels on CUDA, C++ on CPU)
    parallel: str = "ddp"  # ddp (a full copy per process) | fsdp (FSDP2: weights and optimizer sharded)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    # The last N steps encode every patch: the towers' patch dropout is switched off (FLIP's
    # unmasked tuning; see clipkit.train.patch_dropout)
    unmasked_final_steps: int = 0
    accum_steps: int = 1
    grad_clip_norm: float | None = 1.0
    # updates with non-finite gradients are skipped; this many in a row stop the run
    max_nonfinite_steps: int = 10
    log_every_n_steps: int = 10
    ckpt_every_n_steps: int = 500
    keep_last_k: int = 3
    # also keep, beyond the last k, every checkpoint at a multiple of this step (0: none), e.g. the
    # points a warmup-stable-decay run branches its cooldowns from
    keep_every_n_steps: int = 0
    # write checkpoints in a background thread while training goes on (a host copy is taken first)
    ckpt_async: bool = False
    resume: str | None = "auto"  # auto | PATH (a checkpoint folder) | null
    # A second place every checkpoint is copied to, a folder or an fsspec URL (s3://bucket/run with
    # s3fs installed): resume=auto takes the latest from there when the run folder has none
    # (see clipkit.train.mirror)
    mirror: str | None = None

    def check(self, key: str) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigError(f"{key}.max_steps", f"set exactly one of {key}.max_steps and {key}.epochs")
        positive(f"{key}.max_steps", self.max_steps)
        positive(f"{key}.epochs", self.epochs)
        one_of(f"{key}.precision", self.precision, PRECISIONS)
        one_of(f"{key}.device", self.device, ("auto", "cpu", "cuda"))
        one_of(f"{key}.dist_backend", self.dist_backend, ("auto", "nccl", "gloo"))
        one_of(f"{key}.parallel", self.parallel, ("ddp", "fsdp"))
        if self.parallel == "fsdp" and self.precision == "fp16":
            raise ConfigError(
                f"{key}.precision",
                f"fp16 loss scaling is not supported with {key}.parallel=fsdp; "
                "use bf16 (FSDP gathers bf16 weights and reduces gradients in fp32)",
            )
        if not self.fsdp.autocast and (self.parallel != "fsdp" or self.precision != "bf16"):
            raise ConfigError(
                f"{key}.fsdp.autocast",
                f"false (bf16 weights gathered by FSDP, no autocast) needs {key}.parallel=fsdp and "
                f"{key}.precision=bf16",
            )
        self.ema.check(f"{key}.ema")
        positive(f"{key}.unmasked_final_steps", self.unmasked_final_steps, allow_zero=True)
        positive(f"{key}.keep_every_n_steps", self.keep_every_n_steps, allow_zero=True)
        for name in ("accum_steps", "log_every_n_steps", "ckpt_every_n_steps", "keep_last_k", "max_nonfinite_steps"):
            positive(f"{key}.{name}", getattr(self, name))
        positive(f"{key}.grad_clip_norm", self.grad_clip_norm)
        check_mirror(self.mirror)
        if self.resume not in (None, "auto") and not Path(self.resume).expanduser().exists():
            raise ConfigError(f"{key}.resume", f"no checkpoint at {self.resume} (use auto, null or a path)")


# ------------------------------------------------------------------------------------------ eval
@dataclass
class EvalConfig:
    every_n_steps: int = 0  # 0: only at the end of training
    batch_size: int = 256
    workers: int = 0
    # name -> EvalDatasetConfig fields; typed by clipkit.config.validate (an open mapping here, so
    # that `+eval.datasets.NAME.root=...` can add a set from the command line)
    datasets: dict[str, Any] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Embedding geometry (modality gap, uniformity, alignment, ...) on at most this many pairs
    # per set, drawn with a fixed seed (its pairwise terms cost O(n^2)); 0: no geometry.
    geometry_max_pairs: int = 5000
    # Prompts and captions are encoded cut after the longest of each batch, rounded up to this
    # multiple, where the text tower allows it (its padding_is_inert; clipkit.data.text_length):
    # the same embeddings from fewer positions. null: padded to the context length.
    text_pad_multiple: int | None = 8


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
