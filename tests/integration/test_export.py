"""clipkit-export and clipkit.load on a trained demo checkpoint, checked by open_clip and onnxruntime."""

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import demo_overrides, run_cli

# Run in a fresh interpreter, with open_clip and the standard library only: the zero-shot accuracy
# of the exported model on a CLIP_benchmark-layout set, and the embeddings of its first images.
OPEN_CLIP_ZERO_SHOT = textwrap.dedent("""
    import io, json, sys, tarfile
    from pathlib import Path
    import open_clip, torch
    from PIL import Image
    export, root = sys.argv[1], Path(sys.argv[2])
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + export)
    tokenizer = open_clip.get_tokenizer("local-dir:" + export)
    model.eval()
    classnames = root.joinpath("classnames.txt").read_text().split("\\n")
    templates = root.joinpath("zeroshot_classification_templates.txt").read_text().split("\\n")
    classnames, templates = [c for c in classnames if c], [t for t in templates if t]
    images, labels = [], []
    for shard in sorted((root / "test").glob("*.tar"), key=lambda p: int(p.stem)):
        members = {}
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key in sorted(members):
            images.append(preprocess(Image.open(io.BytesIO(members[key]["webp"])).convert("RGB")))
            labels.append(int(members[key]["cls"]))
    with torch.no_grad():
        columns = []
        for name in classnames:
            text = model.encode_text(tokenizer([t.replace("{c}", name) for t in templates]), normalize=True)
            columns.append(torch.nn.functional.normalize(text.mean(0), dim=0))
        embeddings = model.encode_image(torch.stack(images), normalize=True)
    predictions = (embeddings @ torch.stack(columns, 1)).argmax(1)
    acc1 = (predictions == torch.tensor(labels)).float().mean().item()
    print(json.dumps({"acc1": acc1, "first": embeddings[:4].tolist()}))
""")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_demo):
    """A 6-step tri-modal demo run with tiny towers, evaluated by clipkit-eval."""
    work = tmp_path_factory.mktemp("export")
    result = run_cli(
        "clipkit-train",
        [*demo_overrides(small_demo), f"hydra.run.dir={work / 'run'}", "trainer.max_steps=6", "eval=none"],
        work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = run_cli(
        "clipkit-eval",
        [f"checkpoint={work / 'run'}", f"out={work / 'eval'}", f"eval.datasets.shapes.root={small_demo}/eval/shapes"],
        work,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return work


@pytest.mark.slow
def test_open_clip_loads_the_export_with_the_same_embeddings_and_accuracy(trained, small_demo):
    out = trained / "open_clip"
    result = run_cli("clipkit-export", [f"checkpoint={trained / 'run'}", "format=open_clip", f"out={out}"], trained)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "audio tower is left out" in result.stderr
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors"}
    fresh = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_ZERO_SHOT, str(out), str(small_demo / "eval" / "shapes")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = json.loads(fresh.stdout.strip().splitlines()[-1])
    expected = json.loads((trained / "eval" / "shapes.json").read_text())["metrics"]["acc1"]
    assert got["acc1"] == pytest.approx(expected, abs=1e-6)  # float32 mean vs float64; one image is 1/96

    import clipkit

    model = clipkit.load(str(trained / "run"))
    ours = model.encode_image(first_images(small_demo / "eval" / "shapes", 4))
    assert (ours - torch.tensor(got["first"])).abs().max().item() <= 1e-5


def first_images(root: Path, count: int):
    """The first images of an eval set's first shard, in the order OPEN_CLIP_ZERO_SHOT reads them."""
    from PIL import Image

    members = {}
    with tarfile.open(root / "test" / "0.tar") as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            if ext == "webp":
                members[key] = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
    return [members[key] for key in sorted(members)[:count]]


@pytest.mark.slow
def test_onnx_export_of_every_tower_matches_pytorch(trained):
    import onnxruntime

    import clipkit

    out = trained / "onnx"
    result = run_cli("clipkit-export", [f"checkpoint={trained / 'run'}", "format=onnx", f"out={out}"], trained)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "onnx_export.json").read_text())
    assert set(manifest["towers"]) == {"image", "text", "audio"}
    model = clipkit.load(str(trained / "run"))
    inputs = {
        "image": torch.randn(5, 3, 32, 32),
        "text": model.tokenizer(["a red circle", "a low hum"]),
        "audio": torch.randn(4, model.clip_samples),
    }
    encoders = {"image": model.encode_image, "text": model.encode_text, "audio": model.encode_audio}
    for modality, tower in manifest["towers"].items():
        assert tower["max_abs_diff_vs_pytorch"] <= 1e-4
        session = onnxruntime.InferenceSession(str(out / tower["file"]), providers=["CPUExecutionProvider"])
        got = session.run(None, {tower["input"]: inputs[modality].numpy()})[0]
        assert np.abs(got - encoders[modality](inputs[modality]).numpy()).max() <= 1e-4, modality


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")  # lossless, like the array
    return buffer.getvalue()


@pytest.mark.slow
def test_python_api_round_trip(trained):
    from PIL import Image

    import clipkit

    model = clipkit.load(str(trained / "run"))
    image = Image.new("RGB", (48, 40), (200, 40, 40))
    by_pil = model.encode_image(image)
    by_tensor = model.encode_image(model.preprocess_image(image)[None])
    assert by_pil.shape == (1, model.model.embed_dim) and torch.allclose(by_pil, by_tensor)
    assert torch.allclose(by_pil.norm(dim=-1), torch.ones(1), atol=1e-5)
    texts = model.encode_text(["a red circle", "a blue square"])
    assert texts.shape == (2, model.model.embed_dim)
    # strings are encoded cut after the longest (eval.text_pad_multiple): as the full rows are
    assert model.text_pad_multiple == 8 and model._tokenize(["a red circle"]).shape[1] == 8
    full_rows = model.encode_text(model.tokenizer(["a red circle", "a blue square"]))
    torch.testing.assert_close(texts, full_rows, atol=1e-6, rtol=0)
    # A waveform at another rate is resampled; the same sound through the eval loader agrees.
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050).astype(np.float32)
    from_wave = model.encode_audio(tone, sample_rate=22050)
    from clipkit.data.audio import AudioLoader

    loader = AudioLoader(model.sample_rate, model.clip_samples, train=False)
    from_file = model.encode_audio(loader(wav_bytes(tone, 22050))[None])
    assert torch.allclose(from_wave, from_file, atol=1e-5)
    classifier = model.zero_shot_classifier(["red circle", "blue square"], ["a {c}.", "a photo of a {c}."])
    assert classifier.shape == (model.model.embed_dim, 2)


@pytest.mark.slow
def test_eval_of_several_checkpoints_writes_reports_and_one_comparison(trained, small_demo):
    out = trained / "compare"
    shapes = f"eval.datasets.shapes.root={small_demo}/eval/shapes"
    result = run_cli(
        "clipkit-eval",
        [f"checkpoint={trained / 'run'}", f"checkpoint={trained / 'run'}", f"out={out}", shapes],
        trained,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| set | metric | run_step_0000006 | run_step_0000006_2 |" in table and "| shapes | acc1 |" in table
    for label in ("run_step_0000006", "run_step_0000006_2"):
        report = (out / label / "report.md").read_text()
        assert "(shapes_projection.png)" in report and (out / label / "shapes_projection.png").is_file()


@pytest.mark.slow
def test_a_run_started_from_the_open_clip_export_has_its_embeddings(trained, small_demo):
    """clipkit checkpoint -> clipkit-export format=open_clip -> clipkit-train
    experiment=demo_bind_audio model.init.open_clip= (the image and text towers locked, a new audio
    tower bound to their space): the new run's image and text embeddings are the exported model's."""
    import clipkit

    out = trained / "open_clip_init"
    result = run_cli("clipkit-export", [f"checkpoint={trained / 'run'}", "format=open_clip", f"out={out}"], trained)
    assert result.returncode == 0, result.stderr[-3000:]
    run = trained / "from_open_clip"
    result = run_cli(
        "clipkit-train",
        [
            "experiment=demo_bind_audio",
            *demo_overrides(small_demo),
            f"hydra.run.dir={run}",
            "trainer.max_steps=2",
            "eval=none",
            "seed=5",
            f"model.init.open_clip={out}",
        ],
        trained,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised the image and text towers from the open_clip model" in result.stdout
    assert "random initialisation" not in result.stdout + result.stderr
    source, started = clipkit.load(str(trained / "run")), clipkit.load(str(run))
    images = torch.randn(4, 3, 32, 32)
    texts = ["a red circle", "a blue square left of a green star"]
    assert (started.encode_image(images) - source.encode_image(images)).abs().max() <= 1e-6
    assert (started.encode_text(texts) - source.encode_text(texts)).abs().max() <= 1e-6
    audio = zip(started.model.towers["audio"].parameters(), source.model.towers["audio"].parameters())
    assert not all(torch.equal(new, old) for new, old in audio)  # a tower of its own
    missing = run_cli(
        "clipkit-train",
        [
            *demo_overrides(small_demo),
            f"hydra.run.dir={trained / 'no_init'}",
            "trainer.max_steps=2",
            f"model.init.open_clip={trained / 'absent'}",
        ],
        trained,
    )
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"clipkit-train: error: model.init.open_clip: no such file or folder: {trained / 'absent'}"
    ]
    assert not (trained / "no_init").exists()


# Run in a fresh interpreter: open_clip's image and text embeddings of fixed inputs.
OPEN_CLIP_EMBEDDINGS = textwrap.dedent("""
    import json, sys
    import open_clip, torch
    model = open_clip.create_model("local-dir:" + sys.argv[1]).eval()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    torch.manual_seed(0)
    images = torch.randn(2, 3, size, size)
    tokens = open_clip.get_tokenizer("local-dir:" + sys.argv[1])(["a red circle", "a blue square"])
    with torch.no_grad():
        print(json.dumps({"image": model.encode_image(images, normalize=True).tolist(),
                          "text": model.encode_text(tokens, normalize=True).tolist()}))
""")


@pytest.mark.slow
def test_a_zoo_architecture_trains_and_exports_to_open_clip(tmp_path, small_demo):
    """model.arch=RN50 (open_clip's OpenAI ResNet, shrunk): trains, and open_clip loads the export."""
    import clipkit

    run = tmp_path / "run"
    shrunk = [
        "model.embed_dim=32",
        "model.towers.image.width=8",
        "model.towers.image.layers=[1,1,1,1]",
        "model.towers.image.head_width=8",
        "model.towers.image.image_size=64",
        "model.towers.text.width=32",
        "model.towers.text.heads=2",
        "model.towers.text.layers=1",
        "model.towers.text.context_length=16",
    ]
    result = run_cli(
        "clipkit-train",
        [
            "experiment=demo_image_text",
            f"data.demo_root={small_demo}",
            "data.train.num_samples=1200",
            "data.batch_size=16",
            "data.workers=1",
            "trainer.max_steps=2",
            "eval=none",
            f"hydra.run.dir={run}",
            "model.arch=RN50",
            *shrunk,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "open_clip"
    result = run_cli("clipkit-export", [f"checkpoint={run}", "format=open_clip", f"out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_EMBEDDINGS, str(out)], capture_output=True, text=True, timeout=300
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    theirs = json.loads(fresh.stdout.strip().splitlines()[-1])
    ours = clipkit.load(str(run))
    assert ours.model.towers["image"].config.name == "resnet"
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    assert (ours.encode_image(images) - torch.tensor(theirs["image"])).abs().max() <= 1e-5
    assert (ours.encode_text(["a red circle", "a blue square"]) - torch.tensor(theirs["text"])).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "args, key",
    [
        (["checkpoint=/nowhere", "format=onnx", "out=x"], "checkpoint not found"),
        (["checkpoint=/nowhere", "format=tflite", "out=x"], "format:"),
        (["checkpoint=/nowhere", "format=onnx"], "out:"),
    ],
)
def test_export_bad_input_is_one_line_and_exit_2(tmp_path, args, key):
    result = run_cli("clipkit-export", args, tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipkit-export: error: {key}"), result.stderr
