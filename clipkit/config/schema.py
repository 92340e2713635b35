"""Typed schema of the whole configuration, one dataclass per config group.

Hydra merges the YAML groups under ``clipkit/conf`` into these dataclasses, so a misspelt key or a
value of the wrong type is rejected while the config is composed, before any work starts. Tower
configs are the one polymorphic part: their fields depend on the registry entry that ``name``
selects, so ``model.towers`` is an open mapping here and each entry is checked against its
registered dataclass in :mod:`clipkit.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

# Configs that live beside their components, exported here too (X as X): the schema is where every
# group's fields can be found.
from clipkit.data.negatives import HardNegativesConfig as HardNegativesConfig
from clipkit.objectives.caption_loss import CaptionLossConfig as CaptionLossConfig
from clipkit.objectives.loss_config import LossConfig
from clipkit.objectives.terms.base import PairTermConfig as PairTermConfig
from clipkit.objectives.terms.contrastive import ContrastiveLossConfig as ContrastiveLossConfig
from clipkit.objectives.terms.distill import DistillLossConfig as DistillLossConfig
from clipkit.objectives.terms.geometry import AlignmentLossConfig as AlignmentLossConfig
from clipkit.objectives.terms.geometry import CrossUniformityLossConfig as CrossUniformityLossConfig
from clipkit.objectives.terms.geometry import UniformityLossConfig as UniformityLossConfig
from clipkit.objectives.terms.sigmoid import SigmoidLossConfig as SigmoidLossConfig


# ----------------------------------------------------------------------------------------- model
@dataclass
class CaptionHeadConfig:
    """A CoCa-style multimodal text decoder (open_clip's MultimodalTransformer, as wide as the text
    tower) that captions a source modality by cross-attending to its tower's token features,
    pooled to n_queries by attention. No sources: no decoder."""

    sources: list[str] = field(default_factory=list)  # e.g. [image, audio]
    layers: int = 2
    heads: int = 8
    n_queries: int = 64
    pooler_heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class ModelInitConfig:
    """Weights a new run starts from (a resumed run takes its checkpoint's instead)."""

    # An open_clip model on disk: a local-dir folder (as clipkit-export writes it), a training
    # checkpoint (epoch_N.pt), or an open_clip_pytorch_model.bin / open_clip_model.safetensors file.
    # Its image and text towers, projections and logit scale (SigLIP: and bias) load exactly.
    open_clip: str | None = None
    # Which of its towers to take: [image] starts LiT (a pretrained image tower, a new text tower);
    # the logit scale comes with both.
    towers: list[str] = field(default_factory=lambda: ["image", "text"])


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
class ImageTransformConfig:
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    # bicubic | bilinear | nearest: the eval resize (training crops are bicubic, as open_clip's)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest | longest | squash (eval resize, as open_clip)
    # RandomResizedCrop scale range for training; eval uses resize + center crop.
    train_crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])


@dataclass
class SampleKeysConfig:
    """Which file extensions in a webdataset sample carry which modality."""

    image: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    text: list[str] = field(default_factory=lambda: ["txt", "json"])
    audio: list[str] = field(default_factory=lambda: ["flac", "wav", "mp3", "ogg"])
    caption_field: str = "caption"  # the field holding the caption in a `json` member


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
    # When set, the built-in demo data set is generated here first if it is absent.
    demo_root: str | None = None


# ----------------------------------------------------------------------------------- optim/sched
@dataclass
class LayerDecayConfig:
    """Layer-wise learning-rate decay per tower (BEiT's rule, see clipkit.train.layer_decay): a
    tower's block i of L trains at lr * decay ** (L + 1 - i); 1: off. Fine-tuning values: 0.65-0.85."""

    image: float = 1.0
    text: float = 1.0
    audio: float = 1.0


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    layer_decay: LayerDecayConfig = field(default_factory=LayerDecayConfig)


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # final lr as a fraction of optim.lr


# --------------------------------------------------------------------------------------- trainer
@dataclass
class FSDPConfig:
    """trainer.parallel=fsdp: FSDP2 (clipkit.train.parallel)."""

    reshard_after_forward: bool = True  # free each unit's gathered parameters after its forward
    cpu_offload: bool = False  # parameters, gradients and optimizer state kept on the host


@dataclass
class EMAConfig:
    """An exponential moving average of the weights, evaluated and exported in their place."""

    decay: float = 0.0  # per step, e.g. 0.999; 0: off
    warmup: bool = False  # decay min(decay, 1 - step ** -2/3): short runs are not held at the start


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
    # write checkpoints in a background thread while training goes on (a host copy is taken first)
    ckpt_async: bool = False
    resume: str | None = "auto"  # auto | PATH (a checkpoint folder) | null


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
    task: str = "zeroshot_classification"  # zeroshot_classification | retrieval | captioning | compositionality
    modality: str = "image"  # what the samples are: image | audio
    split: str = "test"
    # retrieval only: what the items are matched with: text (the captions) or the other
    # modality the samples carry (image <-> audio retrieval)
    against: str = "text"


@dataclass
class GenerationConfig:
    """How the captioning task generates (model.caption's decoder)."""

    strategy: str = "beam"  # greedy | beam | sample
    max_length: int = 24  # tokens generated after the start token, end token included
    num_beams: int = 3
    length_penalty: float = 1.0  # beam scores are divided by length ** length_penalty
    temperature: float = 1.0  # sample: logits / temperature
    top_k: int = 0  # sample: keep the k most likely tokens (0: all)
    top_p: float = 1.0  # sample: keep the smallest set of tokens with this much probability
    use_cache: bool = True  # keys and values of earlier tokens kept: linear, not quadratic, cost
    seed: int = 0  # sample: the generator's seed


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
