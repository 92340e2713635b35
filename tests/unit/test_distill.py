"""loss.distill: the KL term against a naive reference, teachers from a clipkit checkpoint and from
an open_clip folder, the refusal of a teacher that takes other inputs, and 2-step runs."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.config.compose import compose_config
from clipkit.errors import ConfigError
from clipkit.objectives.distill import distill_loss
from clipkit.train.prepare import prepare
from clipkit.train.trainer import Trainer
from tests.conftest import TINY_MODEL, demo_overrides


def naive_distill(a, b, ta, tb, scale, teacher_scale, valid):
    """Row by row, with the definition of the KL divergence."""
    rows = [i for i in range(a.shape[0]) if valid[i]]
    total = 0.0
    for x, y, tx, ty in ((a, b, ta, tb), (b, a, tb, ta)):
        for i in rows:
            s = torch.stack([scale * x[i] @ y[j] for j in rows]).softmax(0)
            t = torch.stack([teacher_scale * tx[i] @ ty[j] for j in rows]).softmax(0)
            total += sum(t[k] * (math.log(t[k]) - math.log(s[k])) for k in range(len(rows)))
    return float(total) / (2 * len(rows))


def test_kl_matches_the_naive_reference():
    torch.manual_seed(0)
    a, b, ta, tb = (F.normalize(torch.randn(7, 5, dtype=torch.float64), dim=-1) for _ in range(4))
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    got = distill_loss(a, b, ta, tb, torch.tensor(10.0), torch.tensor(30.0), valid=valid)
    assert got.item() == pytest.approx(naive_distill(a, b, ta, tb, 10.0, 30.0, valid), rel=1e-9)
    # A student that matches its teacher has nothing left to learn; the gradient reaches the student.
    same = distill_loss(a, b, a, b, torch.tensor(10.0), torch.tensor(10.0))
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    a.requires_grad_(True)
    distill_loss(a, b, ta, tb, torch.tensor(10.0), torch.tensor(30.0)).backward()
    assert a.grad.abs().sum() > 0


def _run(small_demo, run_dir, *overrides):
    checked, sources = prepare(compose_config([*demo_overrides(small_demo), "eval=none", *overrides]))
    run_dir.mkdir(exist_ok=True)
    trainer = Trainer(checked, sources, run_dir)
    trainer.fit()
    return trainer, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher_run(small_demo, tmp_path_factory):
    """A trained tri-modal demo model: the teacher."""
    run = tmp_path_factory.mktemp("teacher")
    _run(small_demo, run, "trainer.max_steps=3")
    return run


def test_a_clipkit_teacher_teaches_every_pair_it_shares(small_demo, teacher_run, tmp_path):
    trainer, records = _run(
        small_demo,
        tmp_path,
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "loss=distill",
        f"loss.distill.teacher={teacher_run}",
        "seed=3",
    )
    assert {"loss/distill/image_text", "loss/distill/audio_text", "loss/distill/image_audio"} <= set(records[-1])
    assert all(records[-1][k] > 0 for k in ("loss/distill/image_text", "loss/distill/audio_text"))
    assert not any(p.requires_grad for p in trainer.teacher.model.parameters())


def test_an_open_clip_teacher_from_its_folder(small_demo, teacher_run, tmp_path):
    from clipkit.export.open_clip import export_open_clip
    from clipkit.saved import load_checkpoint

    _, checked, bundle = load_checkpoint(str(teacher_run), torch.device("cpu"))
    export_open_clip(checked, bundle.model, tmp_path / "open_clip")  # image and text only
    image_text = [
        "experiment=demo_image_text",
        f"data.demo_root={small_demo}",
        "data.train.num_samples=1200",
        "data.batch_size=16",
        "data.workers=1",
        *TINY_MODEL,
    ]
    checked, sources = prepare(
        compose_config(
            [
                *image_text,
                "eval=none",
                "trainer.max_steps=2",
                "trainer.log_every_n_steps=1",
                "loss=distill",
                f"loss.distill.teacher={tmp_path / 'open_clip'}",
            ]
        )
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(checked, sources, tmp_path / "run")
    assert trainer.teacher.pairs == ["image_text"]
    torch.testing.assert_close(
        trainer.teacher.model.towers["image"].encoder.proj, bundle.model.towers["image"].encoder.proj
    )
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss/distill/image_text"] > 0


def test_a_teacher_with_other_inputs_is_refused(small_demo, teacher_run):
    checked, sources = prepare(
        compose_config(
            [
                *demo_overrides(small_demo),
                "eval=none",
                "trainer.max_steps=2",
                "loss=distill",
                f"loss.distill.teacher={teacher_run}",
                "model.towers.image.image_size=48",
            ]
        )
    )
    with pytest.raises(ConfigError, match="the teacher's image inputs .* differ from the student's"):
        Trainer(checked, sources, teacher_run / "never")
    with pytest.raises(ConfigError, match="loss.distill.teacher"):
        prepare(compose_config([*demo_overrides(small_demo), "loss=distill", "loss.distill.teacher=/nowhere"]))
