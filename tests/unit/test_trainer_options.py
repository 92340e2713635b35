"""Short in-process runs of the trainer with the options a recipe can switch on."""

import json
import logging

import pytest
import torch

from clipkit.config.compose import compose_config
from clipkit.config.validate import check_config
from clipkit.train.prepare import prepare
from clipkit.train.run import train as run
from clipkit.train.trainer import Trainer, locked_without_weights
from tests.conftest import SMALL_DEMO_SAMPLES, demo_overrides


def train(small_demo, tmp_path, *overrides):
    run(
        compose_config(
            [*demo_overrides(small_demo), "trainer.max_steps=3", "trainer.log_every_n_steps=1", "eval=none", *overrides]
        ),
        tmp_path,
    )
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains(small_demo, tmp_path, precision):
    records = train(small_demo, tmp_path, f"trainer.precision={precision}")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss/total"] == r["loss/total"] for r in records)  # no NaN


def test_accumulation_counts_the_accumulated_batch(small_demo, tmp_path):
    records = train(small_demo, tmp_path, "trainer.accum_steps=2")
    assert records[-1]["samples_seen"] == 3 * 2 * 16


def test_epochs_with_sizes_json_and_tensorboard(small_demo, tmp_path):
    records = train(
        small_demo,
        tmp_path,
        "trainer.max_steps=null",
        "trainer.epochs=1",
        "data.train.num_samples=null",
        "data.train.resampled=false",
        "logger.tensorboard=true",
    )
    assert records[-1]["step"] == SMALL_DEMO_SAMPLES // 16  # from the sources' sizes.json files
    assert any((tmp_path / "tensorboard").iterdir())


def test_locked_tower_does_not_change(small_demo, tmp_path):
    checked, sources = prepare(
        compose_config([*demo_overrides(small_demo), "trainer.max_steps=2", "eval=none", "model.towers.text.lock=true"])
    )
    trainer = Trainer(checked, sources, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.towers["text"].state_dict().items()}
    image_before = trainer.model.towers["image"].encoder.proj.clone()
    trainer.fit()
    after = trainer.model.towers["text"].state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    assert not (trainer.model.towers["image"].encoder.proj == image_before).all()


@pytest.mark.parametrize(
    "overrides, warned",
    [
        ([], ["image", "text"]),  # demo_bind_audio without the model to bind to
        (["model.init.open_clip=/models/b32"], []),
        (["model.init.open_clip=/models/b32", "model.init.towers=[image]"], ["text"]),
        (["model.init.clipkit=/runs/tri"], []),
        (["model.init.clipkit=/runs/tri", "model.init.towers=[audio]"], ["image", "text"]),
        (["model.towers.image.weights=/w/image.safetensors", "model.towers.text.lock=false"], []),
    ],
)
def test_a_frozen_tower_without_weights_is_named(overrides, warned):
    checked = check_config(compose_config(["experiment=demo_bind_audio", *overrides]))
    assert locked_without_weights(checked) == warned


def test_resume_skip_applies_to_the_interrupted_epoch_only(small_demo, tmp_path):
    checked, sources = prepare(
        compose_config([*demo_overrides(small_demo), "trainer.max_steps=3", "eval=none", "data.train.resampled=false"])
    )  # epochs: a finite stream
    trainer = Trainer(checked, sources, tmp_path)
    trainer.stream.replay = {0: [1000, 0, 0]}  # as restored: 1000 of the 1200 image-text samples taken
    loader = trainer.loader()
    resumed_epoch = sum(1 for b in loader if b["num_rows"])
    loader.dataset.set_epoch(1)
    next_epoch = sum(1 for b in loader if b["num_rows"])
    assert resumed_epoch == (SMALL_DEMO_SAMPLES - 1000) // 16 and next_epoch == SMALL_DEMO_SAMPLES // 16


def test_layer_decay_trains_every_tower_at_its_rates(small_demo, tmp_path):
    checked, sources = prepare(
        compose_config(
            [
                *demo_overrides(small_demo),
                "trainer.max_steps=2",
                "eval=none",
                "optim.layer_decay.image=0.7",
                "optim.layer_decay.text=0.8",
                "optim.layer_decay.audio=0.9",
            ]
        )
    )
    trainer = Trainer(checked, sources, tmp_path)
    trainer.fit()
    rates = sorted(
        {round(group["lr"] / trainer.optimizer.param_groups[0]["lr"], 6) for group in trainer.optimizer.param_groups}
    )
    # image and text: a stem and 1 block (0.7, 0.49; 0.8, 0.64); the audio CNN: 2 blocks, no stem (0.9, 0.81)
    assert rates == sorted({1.0, 0.7, 0.49, 0.8, 0.64, 0.9, 0.81})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["loss/total"] == records[-1]["loss/total"]


def test_a_cooldown_branched_from_a_stable_runs_checkpoint(small_demo, tmp_path):
    """Warmup-stable-decay as its users run it: a stable (constant) run, then a cooldown started
    from one of its checkpoints in a run folder of its own; each logs the rate its step used."""
    stable, cooldown = tmp_path / "stable", tmp_path / "cooldown"
    stable.mkdir(), cooldown.mkdir()
    lr = 1e-3
    common = [f"optim.lr={lr}", "sched.warmup_steps=2", "trainer.max_steps=6"]
    records = train(small_demo, stable, *common, "sched=constant", "trainer.ckpt_every_n_steps=3")
    assert [r["lr"] for r in records] == pytest.approx([lr / 2, lr, lr, lr, lr, lr])
    records = train(
        small_demo,
        cooldown,
        *common,
        "sched=const_cooldown",
        "sched.cooldown_steps=4",
        f"trainer.resume={stable / 'checkpoints' / 'step_0000003'}",
    )
    assert [r["step"] for r in records] == [4, 5, 6]
    assert [r["lr"] for r in records] == pytest.approx([lr * 3 / 4, lr / 2, lr / 4])


@pytest.mark.parametrize(
    "optimizer", [["optim.name=timm/lamb"], ["optim.name=timm/muon", "optim.fallback=[*token_embedding*]"]]
)
def test_a_timm_optimizer_trains_and_resumes_exactly(small_demo, tmp_path, optimizer):
    """optim.name=timm/lamb, and Muon with the token embeddings on its AdamW fallback: the
    optimizer's state (Muon's choice per parameter included) is checkpointed, so a run resumed at
    step 2 ends with the weights of the uninterrupted one."""
    from clipkit.train import checkpoint as ckpt

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir(), resumed.mkdir()
    common = [*optimizer, "trainer.max_steps=4", "sched=constant"]
    records = train(small_demo, whole, *common, "trainer.ckpt_every_n_steps=2", "trainer.keep_last_k=2")
    assert all(r["loss/total"] == r["loss/total"] for r in records)  # no NaN
    train(small_demo, resumed, *common, f"trainer.resume={whole / 'checkpoints' / 'step_0000002'}")
    expected = ckpt.read_model_state(ckpt.find_latest(whole / "checkpoints"))
    got = ckpt.read_model_state(ckpt.find_latest(resumed / "checkpoints"))
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_a_warm_up_longer_than_the_run_is_named(small_demo, tmp_path, caplog):
    records = train(small_demo, tmp_path, "sched.warmup_steps=4", "optim.lr=0.004")
    assert "sched.warmup_steps=4 is longer than the run (3 steps): the rate never reaches optim.lr" in caplog.text
    assert [r["lr"] for r in records] == pytest.approx([0.001, 0.002, 0.003])


def test_a_resume_under_another_optimizer_is_one_line(small_demo, tmp_path):
    from clipkit.errors import ConfigError

    first, second = tmp_path / "adamw", tmp_path / "lion"
    first.mkdir(), second.mkdir()
    train(small_demo, first, "trainer.max_steps=2")
    checkpoint = first / "checkpoints" / "step_0000002"
    with pytest.raises(ConfigError, match="holds the state of optim.name=adamw, not of timm/lion: resume with"):
        train(small_demo, second, "optim.name=timm/lion", f"trainer.resume={checkpoint}")


@pytest.mark.parametrize("experiment", ["demo_coca", "demo_hard_negatives"])
def test_cutting_captions_padding_trains_as_the_full_context(small_demo, tmp_path, experiment, monkeypatch):
    """data.text_pad_multiple=8: the batches' tokens are cut (the demo's captions fit in 24 of the
    77 positions) and every loss term, the caption head's on images and sounds and the hard
    negatives' included, is the full context's."""
    from clipkit.data.decode import SampleDecoder

    lengths = []
    collate = SampleDecoder.collate

    def collate_and_note_length(self, samples):
        batch = collate(self, samples)
        lengths.append(batch["text"].shape[1])
        return batch

    monkeypatch.setattr(SampleDecoder, "collate", collate_and_note_length)
    overrides = [
        f"experiment={experiment}",
        *(o for o in demo_overrides(small_demo) if experiment == "demo_coca" or "audio" not in o),
        "data.workers=0",  # collate in this process, where it is watched
        "model.towers.text.context_length=77",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "eval=none",
    ]

    def losses(run_dir, *more):
        run_dir.mkdir()
        run(
            compose_config([*overrides, "trainer.max_steps=3", "trainer.log_every_n_steps=1", "eval=none", *more]),
            run_dir,
        )
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith("loss/")} for r in records]

    expected = losses(tmp_path / "full")
    assert set(lengths) == {77} and len(expected[0]) >= 2
    lengths.clear()
    got = losses(tmp_path / "cut", "data.text_pad_multiple=8")
    assert lengths and max(lengths) <= 24 and all(n % 8 == 0 for n in lengths)
    assert got == [pytest.approx(e, abs=2e-5) for e in expected]


def test_a_record_carries_the_mean_loss_of_its_steps(small_demo, tmp_path):
    """loss_mean/<term>: the mean over the steps since the previous record (loss/<term> is the
    last step's); the same run logged every step gives the steps' values."""
    every, third = tmp_path / "every", tmp_path / "third"
    every.mkdir(), third.mkdir()
    steps = train(small_demo, every)
    assert all(r["loss_mean/total"] == pytest.approx(r["loss/total"]) for r in steps)
    (record,) = train(small_demo, third, "trainer.log_every_n_steps=3")
    assert record["loss/total"] == pytest.approx(steps[-1]["loss/total"])
    assert record["loss_mean/total"] == pytest.approx(sum(r["loss/total"] for r in steps) / 3)
    assert {k.removeprefix("loss_mean/") for k in record if k.startswith("loss_mean/")} == {
        k.removeprefix("loss/") for k in record if k.startswith("loss/")
    }


def test_a_skipped_steps_loss_is_left_out_of_the_mean():
    from clipkit.train.metrics import LossWindow

    window = LossWindow()
    for values in ([1.0, 2.0], [float("nan"), 4.0], [3.0, float("inf")]):
        window.add(torch.tensor(values))
    assert window.means().tolist() == [2.0, 3.0]
    window.add(torch.tensor([float("nan")]))
    assert window.means().isnan().all()  # a new window, all of it skipped


@pytest.mark.parametrize("ckpt_async", [False, True])
def test_a_run_whose_folder_is_lost_resumes_from_its_mirror_exactly(small_demo, tmp_path, ckpt_async):
    """trainer.mirror: each checkpoint is copied there (only the kept ones stay, latest last, with
    metrics.jsonl); a run started in an empty folder with the same mirror resumes from its latest
    checkpoint and ends with the weights of a run never interrupted."""
    from clipkit.train import checkpoint as ckpt

    lost, fresh, whole, mirror = (tmp_path / n for n in ("lost", "fresh", "whole", "mirror"))
    for folder in (lost, fresh, whole):
        folder.mkdir()
    common = [
        "sched=constant",
        "trainer.ckpt_every_n_steps=2",
        "trainer.keep_last_k=1",
        f"trainer.ckpt_async={ckpt_async}",
    ]
    train(small_demo, lost, *common, "trainer.max_steps=4", f"trainer.mirror={mirror}")
    assert sorted(p.name for p in (mirror / "checkpoints").iterdir()) == ["latest", "step_0000004"]
    assert (mirror / "checkpoints" / "latest").read_text() == "step_0000004\n"
    local = lost / "checkpoints" / "step_0000004"
    for file in (p for p in local.rglob("*") if p.is_file()):
        assert (mirror / "checkpoints" / "step_0000004" / file.relative_to(local)).read_bytes() == file.read_bytes()
    assert len((mirror / "metrics.jsonl").read_text().splitlines()) == 4

    records = train(small_demo, fresh, *common, "trainer.max_steps=6", f"trainer.mirror={mirror}")
    # the mirror's records of steps 1-4 (their timings are the first run's), then this run's
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[:4] == [json.loads(line) for line in (lost / "metrics.jsonl").read_text().splitlines()]
    train(small_demo, whole, *common, "trainer.max_steps=6")
    expected = ckpt.read_model_state(ckpt.find_latest(whole / "checkpoints"))
    got = ckpt.read_model_state(ckpt.find_latest(fresh / "checkpoints"))
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert sorted(p.name for p in (mirror / "checkpoints").iterdir()) == ["latest", "step_0000006"]


def test_a_failed_copy_to_the_mirror_is_a_warning_and_training_goes_on(small_demo, tmp_path, caplog):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the mirror's folder would go")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = train(
        small_demo, run_dir, "trainer.max_steps=4", "trainer.ckpt_every_n_steps=2", f"trainer.mirror={blocked}"
    )
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    failed = [r.getMessage() for r in caplog.records if "to trainer.mirror" in r.getMessage()]
    assert len(failed) == 2 and failed[0].startswith("copying checkpoint step_0000002 to trainer.mirror=")


@pytest.mark.parametrize(
    "latest, message", [("garbage", "names no checkpoint ('garbage')"), ("step_0000004", "which it does not hold")]
)
def test_a_mirror_whose_latest_is_wrong_is_one_line(tmp_path, latest, message):
    from clipkit.errors import CheckpointError
    from clipkit.train.mirror import CheckpointMirror

    (tmp_path / "mirror" / "checkpoints").mkdir(parents=True)
    (tmp_path / "mirror" / "checkpoints" / "latest").write_text(latest + "\n")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CheckpointMirror(str(tmp_path / "mirror")).fetch_latest(tmp_path / "run" / "checkpoints")
    assert CheckpointMirror(str(tmp_path / "empty")).fetch_latest(tmp_path / "run" / "checkpoints") is None


def test_a_mirror_fsspec_cannot_reach_is_one_line():
    from clipkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^trainer.mirror: cannot use nope://x: Protocol not known: nope"):
        check_config(compose_config(["trainer.mirror=nope://x"]))


def test_a_run_ending_on_a_checkpoint_step_writes_it_once(small_demo, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="clipkit.train.checkpoint_manager")
    train(small_demo, tmp_path, "trainer.max_steps=4", "trainer.ckpt_every_n_steps=2")
    saved = [r.getMessage().rsplit("/", 1)[-1] for r in caplog.records if r.getMessage().startswith("saved checkpoint")]
    assert saved == ["step_0000002", "step_0000004"]
