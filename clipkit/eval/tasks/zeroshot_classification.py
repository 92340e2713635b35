"""``zeroshot_classification``: each item against one text embedding per class (the mean over
templates), as CLIP_benchmark computes it. The set's root holds ``classnames.txt`` and
``zeroshot_classification_templates.txt`` (``{c}`` placeholder); each sample a ``cls`` member."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipkit.errors import ConfigError, DataError
from clipkit.eval.eval_set import EvalSet, file_lines, require_samples
from clipkit.eval.tasks.base import EVAL_TASKS, EvalTask, TaskResult
from clipkit.eval.zeroshot import classification_metrics, zero_shot_classifier
from clipkit.modalities.base import Loader

if TYPE_CHECKING:
    from clipkit.eval.runner import Evaluator
    from clipkit.models.multimodal import MultiModalModel

FILES = {"classnames": "classnames.txt", "templates": "zeroshot_classification_templates.txt"}


@EVAL_TASKS.register("zeroshot_classification")
class ZeroShotClassification(EvalTask):
    def open(self, eval_set: EvalSet, root: Path, key: str) -> None:
        for attr, file in FILES.items():
            path = root / file
            if not path.is_file():
                raise ConfigError(f"{key}.root", f"zero-shot classification needs {path}{_other_task(root, key)}")
            setattr(eval_set, attr, file_lines(path))
            if not getattr(eval_set, attr):
                raise ConfigError(f"{key}.root", f"{path} is empty")
        bad = [t for t in eval_set.templates if "{c}" not in t]
        if bad:
            raise ConfigError(f"{key}.root", f"template without a {{c}} placeholder: {bad[0]!r}")

    def target(self, sample: dict, eval_set: EvalSet, loaders: dict[str, Loader]) -> int:
        return int(sample["cls"].decode("utf-8").strip())

    def run(self, evaluator: Evaluator, model: MultiModalModel, eval_set: EvalSet) -> TaskResult:
        device = evaluator.device
        classifier = zero_shot_classifier(
            lambda t: evaluator.encode(model, "text", t),
            evaluator.tokenize,
            eval_set.classnames,
            eval_set.templates,
            device,
        )
        items = [torch.zeros(0, model.embed_dim, device=device)]
        labels: list[int] = []
        for inputs, targets in evaluator.loader(eval_set):
            items.append(evaluator.encode(model, eval_set.modality, inputs))
            labels.extend(targets)
        embeddings = evaluator.gather(torch.cat(items))
        all_labels = evaluator.gather(torch.tensor(labels, dtype=torch.long, device=device))
        require_samples(eval_set, len(all_labels))
        classes = len(eval_set.classnames or [])
        if int(all_labels.min()) < 0 or int(all_labels.max()) >= classes:
            raise DataError(
                f"eval set {eval_set.name}: its samples have labels {int(all_labels.min())}.."
                f"{int(all_labels.max())}, but its classnames.txt names {classes} classes"
            )
        all_logits = embeddings @ classifier.float().cpu()
        # Geometry of each item against its class's text embedding (the zero-shot classifier).
        geometry = evaluator.geometry(
            eval_set.name, embeddings, classifier.float().cpu().T[all_labels], eval_set.modality, "text"
        )
        metrics = {**classification_metrics(all_logits, all_labels), **geometry, "num_samples": len(all_labels)}
        return TaskResult(metrics, [])


def _other_task(root: Path, key: str) -> str:
    """The task a set without class names is more likely for: the one its dataset_type.txt names
    (clipkit's writers leave one), else retrieval (CLIP_benchmark's caption sets)."""
    written = root / "dataset_type.txt"
    lines = file_lines(written) if written.is_file() else []
    task = lines[0] if lines else "retrieval"
    return f"; for a {task} set add {key}.task={task}"
