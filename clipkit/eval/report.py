"""``report.md`` with its figures: a results table per eval set, training curves, and per set a
similarity heatmap and a 2-D projection of both modalities' embeddings that shows their gap.

Figures are PNGs beside the report, drawn on matplotlib ``Figure`` objects without pyplot: no
display, no global figure registry, and none of pyplot's start-up cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

Metrics = dict[str, float]
Pairs = dict[str, tuple[torch.Tensor, torch.Tensor, str, str]]  # set -> (x, y, x name, y name)
HEATMAP_ROWS = 24
PROJECTION_POINTS = 400

CURVE_PANELS = (
    ("loss terms", "loss/"),
    ("learning rate", "lr"),
    ("logit scales", "logit_scale/"),
    ("sigmoid scales and biases", "sigmoid_"),
    ("samples per second", "samples_per_second"),
)

COUNTS = ("num_samples", "missing_samples")  # in a set's results beside its metrics


def _metric_table(name: str, metrics: Metrics) -> list[str]:
    rows = [f"### {name}", "", "| metric | value |", "|---|---|"]
    rows += [
        f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in metrics.items()
    ]
    return rows + [""]


def plot_curves(metrics_file: Path, out: Path) -> Path | None:
    """Training curves from metrics.jsonl; None when it holds no training steps."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss/total" in r]
    if not records:
        return None
    panels = [
        (title, sorted({k for r in records for k in r if k == key or k.startswith(key)})) for title, key in CURVE_PANELS
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    figure = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            axis.plot(*zip(*points), label=key.split("/", 1)[-1] if "/" in key else key, linewidth=1.2)
        axis.set_title(title)
        axis.set_xlabel("step")
        if len(keys) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    return out


def plot_similarity(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str, out: Path) -> Path:
    """Cosine similarities of the first pairs: partners on the diagonal."""
    rows = min(HEATMAP_ROWS, len(x))
    similarity = (x[:rows] @ y[:rows].T).numpy()
    figure = Figure(figsize=(4.6, 4))
    axis = figure.subplots()
    image = axis.imshow(similarity, cmap="viridis")
    axis.set_xlabel(y_name)
    axis.set_ylabel(x_name)
    axis.set_title(f"{x_name}-{y_name} cosine similarity")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    return out


def plot_projection(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str, out: Path) -> Path:
    """Both modalities in 2-D: along the line joining their centroids (the modality gap), and
    along the main direction of what remains (PCA); a few partners joined."""
    count = min(PROJECTION_POINTS, len(x))
    x, y = x[:count].double(), y[:count].double()
    both = torch.cat([x, y])
    centre = both.mean(0)
    gap = x.mean(0) - y.mean(0)
    gap_axis = gap / gap.norm().clamp(min=1e-12)
    residual = (both - centre) - ((both - centre) @ gap_axis)[:, None] * gap_axis
    second_axis = torch.linalg.svd(residual, full_matrices=False)[2][0]
    axes = torch.stack([gap_axis, second_axis])
    px, py = ((x - centre) @ axes.T).numpy(), ((y - centre) @ axes.T).numpy()
    figure = Figure(figsize=(4.6, 4))
    axis = figure.subplots()
    for i in range(min(count, 60)):
        axis.plot([px[i, 0], py[i, 0]], [px[i, 1], py[i, 1]], color="0.8", linewidth=0.5, zorder=0)
    axis.scatter(px[:, 0], px[:, 1], s=6, label=x_name)
    axis.scatter(py[:, 0], py[:, 1], s=6, label=y_name)
    axis.set_xlabel(f"centroid direction (gap {float(gap.norm()):.2f})")
    axis.set_ylabel("main remaining direction")
    axis.set_title(f"{x_name} and {y_name} embeddings")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    return out


def write_report(
    out_dir: Path,
    title: str,
    results: dict[str, Metrics],
    pairs: Pairs,
    metrics_file: Path | None = None,
    preamble: Sequence[str] = (),
) -> Path:
    """``out_dir/report.md`` and its PNGs; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *preamble]
    if metrics_file is not None and metrics_file.is_file():
        curves = plot_curves(metrics_file, out_dir / "curves.png")
        if curves:
            lines += ["## Training", "", f"![training curves]({curves.name})", ""]
    if results:
        lines += ["## Evaluation", ""]
    for name, metrics in results.items():
        lines += _metric_table(name, metrics)
        if name in pairs:
            x, y, x_name, y_name = pairs[name]
            heatmap = plot_similarity(x, y, x_name, y_name, out_dir / f"{name}_similarity.png")
            projection = plot_projection(x, y, x_name, y_name, out_dir / f"{name}_projection.png")
            lines += [f"![{name} similarity]({heatmap.name}) ![{name} projection]({projection.name})", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def comparison_table(results: dict[str, dict[str, Metrics]]) -> list[str]:
    """One markdown table: a row per (set, metric) that every checkpoint reports, a column per
    checkpoint."""
    runs = list(results)
    rows = ["| set | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for name, metrics in results[runs[0]].items():
        for key in metrics:
            if key in COUNTS or not all(key in results[run].get(name, {}) for run in runs):
                continue
            rows.append(f"| {name} | {key} | " + " | ".join(f"{results[run][name][key]:.4f}" for run in runs) + " |")
    return rows
