"""Zero-shot classification, as CLIP_benchmark computes it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Encoder = Callable[[torch.Tensor], torch.Tensor]  # token ids -> normalised embeddings


@torch.no_grad()
def zero_shot_classifier(
    encode_text: Encoder, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """One unit-norm column per class: the mean over templates of the prompts' embeddings."""
    columns = []
    for name in classnames:
        tokens = tokenizer([t.replace("{c}", name) for t in templates]).to(device)
        mean = encode_text(tokens).float().mean(dim=0)
        columns.append(F.normalize(mean, dim=0))
    return torch.stack(columns, dim=1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 and mean_per_class_recall (balanced accuracy) over the classes present."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    correct = top == labels[:, None]
    predicted = top[:, 0]
    recalls: list[float] = []
    for cls in labels.unique():
        rows = labels == cls
        recalls.append((predicted[rows] == cls).double().mean().item())
    return {
        "acc1": correct[:, 0].double().mean().item(),
        "acc5": correct.any(dim=1).double().mean().item(),
        "mean_per_class_recall": sum(recalls) / len(recalls),
    }
