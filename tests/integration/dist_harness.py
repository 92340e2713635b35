"""Run under torchrun: jobs of one step's loss and gradients on this rank's slice of a fixed batch.

    torchrun --nproc_per_node=2 dist_harness.py OUT_DIR JOB [JOB ...]

A job is named ``MODE+PARALLEL+STEPS+PRECISION+OPTIMIZER`` (:class:`Job`); they run one after another in
the same processes (one launch: a torch process takes seconds to start, a job a fraction of one).
MODE is ``local`` (local loss), ``global`` (full gathered matrix), ``accum`` (local loss with
two accumulated micro-batches per rank) or ``masked`` (some rows of rank 0 and every row of rank 1
lack the image), all with InfoNCE; or ``sigmoid``, ``geometry``, ``coca`` and ``distill``, the other
loss terms (see ``loss_config``), and ``negatives``, InfoNCE with two hard-negative captions per row
(some absent), hardness weighting, debiasing and the decoupled form, each with a few rows lacking
the image on each rank; or ``locked``,
InfoNCE with the text tower locked; or ``compiled``, InfoNCE with the towers compiled (the
reference stays eager); or ``gradients``, where every optimizer step takes seeded full-rank random
gradients instead (the same on every rank and layout): the tiny model's own are of rank at most
its rows, on which Muon's bf16 Newton-Schulz amplifies rounding whatever the layout. Each rank
saves {"loss", "grads"} of the first step to OUT_DIR/JOB/rank<r>.pt, and with STEPS > 1 the full
weights after STEPS optimizer steps on the same batch as "weights". The model is wrapped in DDP
(``ddp``) or sharded by FSDP2 (``fsdp``).
PRECISION is ``fp32``, ``bf16`` (autocast) or ``bf16-weights`` (FSDP's bf16 weights, no autocast).
OPTIMIZER is an ``optim.name`` (``adamw``, or ``timm:NAME`` for ``timm/NAME``).
``reference(n, mode)`` computes the first step on one process over the whole batch.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, distribute_tensor

from clipkit import distributed
from clipkit.config.schema import (
    AlignmentLossConfig,
    CaptionHeadConfig,
    CaptionLossConfig,
    ContrastiveLossConfig,
    CrossUniformityLossConfig,
    DistillLossConfig,
    FSDPConfig,
    HardNegativesConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SigmoidLossConfig,
    UniformityLossConfig,
)
from clipkit.models.build import pair_parameters
from clipkit.models.multimodal import MultiModalModel, build_model
from clipkit.models.towers.image import ViTConfig
from clipkit.models.towers.text import TextTransformerConfig
from clipkit.objectives.collectives import process_group
from clipkit.objectives.objective import Objective, TeacherOutputs
from clipkit.objectives.terms.base import PAIR_TERMS
from clipkit.train.compile import compile_towers
from clipkit.train.optim import build_optimizer
from clipkit.train.parallel import wrap
from clipkit.train.precision import autocast_factory, grad_scaler
from clipkit.train.step import forward_backward

PER_RANK = 6


@dataclass(frozen=True)
class Job:
    mode: str
    parallel: str = "ddp"
    steps: int = 1
    precision: str = "fp32"
    optimizer: str = "adamw"

    @property
    def name(self) -> str:
        return f"{self.mode}+{self.parallel}+{self.steps}+{self.precision}+{self.optimizer.replace('/', ':')}"

    @classmethod
    def parse(cls, name: str) -> Job:
        mode, parallel, steps, precision, optimizer = name.split("+")
        return cls(mode, parallel, int(steps), precision, optimizer.replace(":", "/"))

    def results(self, out_dir: Path, rank: int) -> dict:
        return torch.load(out_dir / self.name / f"rank{rank}.pt")


def loss_config(mode: str) -> LossConfig:
    """local / global / accum / masked: InfoNCE; sigmoid: SigLIP alone; geometry: InfoNCE with
    uniformity, alignment and cross-uniformity; coca: InfoNCE with the caption loss; term:NAME:
    InfoNCE with any registered pair term at weight 0.5 (its defaults otherwise)."""
    if mode.startswith("term:"):
        name = mode.partition(":")[2]
        return LossConfig(**{name: PAIR_TERMS.get(name).config_class(weight=0.5)})
    if mode == "sigmoid":
        return LossConfig(contrastive=ContrastiveLossConfig(weight=0.0), sigmoid=SigmoidLossConfig(weight=1.0))
    if mode == "geometry":
        return LossConfig(
            uniformity=UniformityLossConfig(weight=0.5),
            alignment=AlignmentLossConfig(weight=0.7),
            cross_uniformity=CrossUniformityLossConfig(weight=0.3),
        )
    if mode == "coca":
        return LossConfig(caption=CaptionLossConfig(weight=2.0))
    if mode == "distill":
        return LossConfig(distill=DistillLossConfig(weight=0.8, teacher="(a fixed tiny model)"))
    if mode == "negatives":
        hard_negatives = HardNegativesConfig(source="demo", k=2, weight=1.5)
        return LossConfig(
            contrastive=ContrastiveLossConfig(hardness=2.0, debias=0.05, decoupled=True, hard_negatives=hard_negatives)
        )
    return LossConfig(contrastive=ContrastiveLossConfig(local_loss=mode != "global"))


def tiny_model(mode: str) -> MultiModalModel:
    torch.manual_seed(0)
    caption = (
        CaptionHeadConfig(sources=["image"], layers=1, heads=2, n_queries=3, pooler_heads=2)
        if mode == "coca"
        else CaptionHeadConfig()
    )
    return build_model(
        16,
        {
            "image": ViTConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
            "text": TextTransformerConfig(context_length=8, width=32, heads=2, layers=1, lock=mode == "locked"),
        },
        ["image_text"],
        pair_parameters(ModelConfig(), loss_config(mode)),
        caption,
    )


def fixed_batch(n: int, mode: str = "local") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 49000, (n, 8), generator=generator)
    tokens[:, 0] = 49406  # start of text
    tokens[:, -1] = 49407  # end-of-text, where argmax pooling reads
    tokens[::2, 5:] = 0  # shorter captions: end at 4, then padding
    tokens[::2, 4] = 49407
    batch = {"image": torch.randn(n, 3, 16, 16, generator=generator), "text": tokens}
    if mode == "negatives":  # two hard-negative captions per row: its own tokens with one changed
        negatives = tokens[:, None, :].repeat(1, 2, 1)
        negatives[:, 0, 2] = torch.randint(1, 49000, (n,), generator=generator)
        negatives[:, 1, 3] = torch.randint(1, 49000, (n,), generator=generator)
        batch["text_negatives"] = negatives
    return batch


def fixed_present(n: int, mode: str) -> dict[str, torch.Tensor]:
    image = torch.ones(n, dtype=torch.bool)
    if mode == "masked":
        image[[1, 4]] = False
        image[PER_RANK : 2 * PER_RANK] = False  # rank 1: no image at all
    elif mode in ("sigmoid", "geometry", "coca", "distill", "negatives") or mode.startswith("term:"):
        image[[1, 4, PER_RANK + 2]] = False  # both ranks keep rows to score across ranks
    present = {"image": image, "text": torch.ones(n, dtype=torch.bool)}
    if mode == "negatives":  # some rows with one hard negative, one (on rank 1) with none
        negatives = torch.ones(n, 2, dtype=torch.bool)
        negatives[[0, 3, PER_RANK + 1], 1] = False
        negatives[PER_RANK + 4] = False
        present["text_negatives"] = negatives
    return present


def teacher_outputs(batch: dict[str, torch.Tensor], mode: str) -> TeacherOutputs | None:
    """distill: a fixed tiny teacher of other weights and scale, on the same rows."""
    if mode != "distill":
        return None
    teacher = tiny_model("local").eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in teacher.parameters():  # other weights than the student's
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
        embeddings = {m: F.normalize(teacher.towers[m](batch[m]), dim=-1) for m in ("image", "text")}
    return TeacherOutputs(embeddings, {"image_text": torch.tensor([20.0])})


def step(
    model,
    core: MultiModalModel,
    objective: Objective,
    batch: dict[str, torch.Tensor],
    mask: dict[str, torch.Tensor],
    parts: int,
    mode: str = "local",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
):
    chunks: list[dict[str, torch.Tensor]] = [{k: v.chunk(parts)[i] for k, v in batch.items()} for i in range(parts)]
    present = [{k: v.chunk(parts)[i] for k, v in mask.items()} for i in range(parts)]
    cpu = torch.device("cpu")
    losses = forward_backward(
        model,
        objective,
        chunks,
        present,
        autocast,
        grad_scaler("fp32", cpu),
        teacher_outputs(batch, mode),
    )
    grads = {n: full(p.grad).detach().clone() for n, p in core.named_parameters() if p.grad is not None}
    return losses["total"].detach(), grads


def random_gradients(core: MultiModalModel, step_index: int) -> None:
    """Every parameter's gradient: seeded random values, the same whole tensor on every rank,
    this rank's shard of it under FSDP."""
    generator = torch.Generator().manual_seed(1000 + step_index)
    for param in core.parameters():
        grad = torch.randn(param.shape, generator=generator)
        if isinstance(param, DTensor):
            grad = distribute_tensor(grad, param.device_mesh, param.placements)
        param.grad = grad


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, also of a parameter or gradient that FSDP shards."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def reference(n: int, mode: str):
    core = tiny_model(mode)
    return step(
        core, core, Objective(loss_config(mode)), fixed_batch(n, mode), fixed_present(n, mode), parts=1, mode=mode
    )


def run(job: Job, env: distributed.DistEnv, out_dir: Path) -> None:
    mode, precision = job.mode, job.precision
    core = tiny_model(mode)
    if mode == "compiled":
        compile_towers(core)
    dtype = precision.removesuffix("-weights")
    model = wrap(core, job.parallel, FSDPConfig(), dtype)
    autocast = autocast_factory(dtype, torch.device("cpu"), enabled=not precision.endswith("-weights"))
    assert job.parallel != "fsdp" or all(isinstance(p, DTensor) for p in core.parameters()), "not sharded"
    objective = Objective(loss_config(mode), process_group(env.world_size))
    n = PER_RANK * env.world_size
    mine = slice(env.rank * PER_RANK, (env.rank + 1) * PER_RANK)
    batch = {k: v[mine] for k, v in fixed_batch(n, mode).items()}
    mask = {k: v[mine] for k, v in fixed_present(n, mode).items()}
    optimizer = build_optimizer(core, OptimConfig(name=job.optimizer, lr=1e-3, weight_decay=0.1))
    parts = 2 if mode == "accum" else 1
    loss, grads = step(model, core, objective, batch, mask, parts, mode, autocast)
    saved = {"loss": distributed.all_reduce_mean(loss), "grads": grads}
    if job.steps > 1:
        for i in range(job.steps - 1):
            if mode == "gradients":
                random_gradients(core, i)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            core.clamp_logit_scales()
            step(model, core, objective, batch, mask, parts, mode, autocast)
        if mode == "gradients":
            random_gradients(core, job.steps - 1)
        optimizer.step()
        saved["weights"] = {n: full(p).detach().clone() for n, p in core.named_parameters()}
    (out_dir / job.name).mkdir(parents=True, exist_ok=True)
    torch.save(saved, out_dir / job.name / f"rank{env.rank}.pt")


def main(out_dir: Path, jobs: list[Job]) -> None:
    env = distributed.init_distributed("cpu", "gloo")
    for job in jobs:
        run(job, env, out_dir)
    distributed.shutdown(env)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Job.parse(name) for name in sys.argv[2:]])
