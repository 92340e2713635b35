"""Export to ONNX: one file per tower, preprocessed input -> L2-normalised embedding.

``image.onnx`` takes (N, 3, H, W) float32 (resized, cropped and normalised as in evaluation),
``text.onnx`` (N, context_length) int64 token ids (open_clip's tokenizer), ``audio.onnx``
(N, samples) float32 mono waveforms at the tower's rate: the log-mel front end is inside. The batch
axis is dynamic. Each file is checked after writing: onnxruntime on a batch of another size must
match PyTorch within ``TOLERANCE``. ``onnx_export.json`` lists the files, their inputs, the
preprocessing they expect and the measured differences.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipkit.atomic import staged_folder
from clipkit.errors import ExportError
from clipkit.models.build import ModelBundle

TOLERANCE = 1e-4
MANIFEST = "onnx_export.json"
OPSET = 18


class NormalizedTower(nn.Module):
    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(inputs), dim=-1)


def _example(bundle: ModelBundle, modality: str, rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, *bundle.feeds[modality].input_shape)
    if modality == "text":
        words = ["a small red circle", "three short high beeps", "a photo of a dog", "silence"]
        return bundle.tokenizer([words[(seed + i) % len(words)] for i in range(rows)])
    return torch.randn(shape, generator=generator)


def _export_tower(bundle: ModelBundle, modality: str, path: Path) -> float:
    """Writes ``path``; returns the largest |onnxruntime - PyTorch| on a fresh batch."""
    import onnxruntime

    module = NormalizedTower(bundle.model.towers[modality]).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its passes
        torch.onnx.export(
            module,
            (_example(bundle, modality, 2, seed=0),),
            str(path),
            input_names=[modality],
            output_names=["normalized_embedding"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    check = _example(bundle, modality, 3, seed=1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {modality: check.numpy()})[0]
    with torch.no_grad():
        expected = module(check).numpy()
    return float(np.abs(got - expected).max())


def export_onnx(bundle: ModelBundle, out: Path) -> Path:
    """Writes ``out`` whole or not at all; raises ExportError if a tower does not match."""
    model = bundle.model.cpu().eval()
    out = Path(out).expanduser()
    with staged_folder(out) as staging:
        towers: dict[str, dict] = {}
        for modality in model.modalities:
            difference = _export_tower(bundle, modality, staging / f"{modality}.onnx")
            if not difference <= TOLERANCE:
                raise ExportError(
                    f"format=onnx: the {modality} tower's ONNX output differs from PyTorch by "
                    f"{difference:.2e} (> {TOLERANCE:.0e}); nothing was written"
                )
            towers[modality] = {
                "file": f"{modality}.onnx",
                "input": modality,
                "input_shape": ["batch", *bundle.feeds[modality].input_shape],
                "input_dtype": str(bundle.feeds[modality].dtype).replace("torch.", ""),
                "output": "normalized_embedding",
                "max_abs_diff_vs_pytorch": difference,
            }
        manifest = {
            "embed_dim": model.embed_dim,
            "opset": OPSET,
            "towers": towers,
            "preprocessing": {m: feed.preprocessing for m, feed in bundle.feeds.items()},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
