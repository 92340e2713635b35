"""Plugins for real: the example module (examples/plugin/my_parts.py) named by CLIPKIT_PLUGINS or by
an installed package's entry point registers a tower and a loss term that every command and every
torchrun process takes like clipkit's own; a checkpoint names the plugins it needs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import demo_overrides, torchrun

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin"
BIN = Path(sys.executable).parent


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    for name in ("CLIPKIT_PLUGINS", "PYTHONPATH"):
        if name not in env:
            full_env.pop(name, None)
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


REGISTERED = (
    "import dataclasses; from clipkit.config.schema import ClipkitConfig; from clipkit.models.towers import TOWERS; "
    "print('mlp_image' in TOWERS, 'cosine_align' in {f.name for f in dataclasses.fields(ClipkitConfig().loss)})"
)


def test_an_installed_packages_entry_point_is_loaded(tmp_path):
    """What pip leaves of a package declaring [project.entry-points."clipkit.plugins"]: its
    dist-info with entry_points.txt, found on sys.path as importlib.metadata finds any."""
    info = tmp_path / "my_parts_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-parts-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clipkit.plugins]\nmine = my_parts\n")
    found = run([sys.executable, "-c", REGISTERED], tmp_path, PYTHONPATH=f"{tmp_path}{os.pathsep}{EXAMPLE}")
    assert found.stdout.split() == ["True", "True"], found.stderr[-2000:]


def test_a_plugin_that_fails_is_one_line(tmp_path):
    (tmp_path / "clash.py").write_text(
        "from clipkit.models.towers.base import TOWERS\n"
        "from clipkit.models.towers.image import ViTConfig\n"
        "TOWERS.register('vit', ViTConfig)(lambda cfg, embed_dim: None)\n"
    )
    for plugins, problem in (
        ("nope", "cannot import plugin 'nope': ModuleNotFoundError: No module named 'nope'"),
        ("clash", "cannot import plugin 'clash': ValueError: tower 'vit' is registered twice"),
    ):
        result = run([str(BIN / "clipkit-train")], tmp_path, CLIPKIT_PLUGINS=plugins, PYTHONPATH=str(tmp_path))
        assert result.returncode == 2
        assert result.stderr.strip() == f"clipkit-train: error: CLIPKIT_PLUGINS: {problem}"


@pytest.mark.slow
def test_a_plugins_tower_and_term_train_under_torchrun_and_its_checkpoint_needs_it(tmp_path, small_demo):
    run_dir = tmp_path / "run"
    overrides = [
        o for o in demo_overrides(small_demo) if not o.startswith(("model.towers.image.", "model.towers.audio."))
    ]
    plugin = {"CLIPKIT_PLUGINS": "my_parts", "PYTHONPATH": str(EXAMPLE)}
    args = [
        "experiment=demo_image_text",
        *overrides,
        "model/towers/image=mlp_image",
        "model.towers.image.hidden=32",
        "loss.cosine_align.weight=0.5",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=2",
        "eval=none",
        f"hydra.run.dir={run_dir}",
    ]
    result = run(torchrun(2, ["-m", "clipkit.cli.train", *args]), tmp_path, **plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and 0 < last["loss/cosine_align/image_text"] < 2
    manifest = json.loads((run_dir / "checkpoints" / "step_0000004" / "manifest.json").read_text())
    assert manifest["plugins"] == ["my_parts"]

    evaluate = [
        str(BIN / "clipkit-eval"),
        f"checkpoint={run_dir}",
        f"+eval.datasets.shapes.root={small_demo}/eval/shapes",
    ]
    result = run(evaluate, tmp_path)
    assert result.returncode == 2
    assert "written with the plugin module(s) my_parts, not loaded here: name them in CLIPKIT_PLUGINS" in result.stderr
    result = run(evaluate, tmp_path, **plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = json.loads((run_dir / "checkpoints" / "step_0000004" / "eval" / "shapes.json").read_text())
    assert shapes["metrics"]["num_samples"] == 96  # the small demo's set

    # open_clip cannot build the plugin's tower; ONNX takes every tower
    export = [str(BIN / "clipkit-export"), f"checkpoint={run_dir}"]
    result = run([*export, "format=open_clip", f"out={tmp_path / 'oc'}"], tmp_path, **plugin)
    assert result.returncode == 2 and "the 'mlp_image' image tower is not one of them" in result.stderr
    result = run([*export, "format=onnx", f"out={tmp_path / 'onnx'}"], tmp_path, **plugin)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == ["image.onnx", "text.onnx"]
