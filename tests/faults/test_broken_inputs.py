"""Broken eval sets, sample keys that match nothing and a wrong export target: one line naming
the problem, exit status 2."""

import json
import shutil

import pytest

from clipkit.data.write import write_eval_set
from tests.conftest import demo_overrides, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_demo):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    result = run_cli(
        "clipkit-train",
        [*demo_overrides(small_demo), f"hydra.run.dir={run_dir}", "trainer.max_steps=2", "eval=none"],
        run_dir.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def evaluate(trained, root, tmp_path):
    return run_cli(
        "clipkit-eval",
        [f"checkpoint={trained}", f"out={tmp_path / 'out'}", f"eval.datasets.broken.root={root}"],
        tmp_path,
    )


@pytest.mark.faults
@pytest.mark.slow
def test_broken_eval_sets_are_one_line(trained, small_demo, tmp_path):
    shapes = tmp_path / "shapes"
    shutil.copytree(small_demo / "eval" / "shapes", shapes)
    (shapes / "zeroshot_classification_templates.txt").write_text("\n")
    assert "zeroshot_classification_templates.txt is empty" in one_line_error(evaluate(trained, shapes, tmp_path))

    shutil.copy(small_demo / "eval" / "shapes" / "zeroshot_classification_templates.txt", shapes)
    names = (shapes / "classnames.txt").read_text().splitlines()
    (shapes / "classnames.txt").write_text("\n".join(names[:5]) + "\n")  # 24 labels, 5 names
    assert "names 5 classes" in one_line_error(evaluate(trained, shapes, tmp_path))

    # a retrieval set under the default task: the line says which task to set
    hint = "classnames.txt; for a retrieval set add eval.datasets.broken.task=retrieval"
    assert hint in one_line_error(evaluate(trained, small_demo / "eval" / "scenes", tmp_path))

    corrupt = tmp_path / "corrupt"
    write_eval_set(
        corrupt,
        ({"__key__": f"s{i}", "webp": b"not an image", "cls": 0} for i in range(4)),
        classnames=["circle"],
        templates=["a {c}."],
        dataset_type="zeroshot_classification",
    )
    assert "not one readable sample in its 1 shard" in one_line_error(evaluate(trained, corrupt, tmp_path))


@pytest.mark.faults
@pytest.mark.slow
def test_export_into_a_file_is_one_line(trained, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    error = one_line_error(
        run_cli("clipkit-export", [f"checkpoint={trained}", "format=open_clip", f"out={target}"], tmp_path)
    )
    assert "is a file" in error and target.read_text() == "keep me"


@pytest.mark.faults
@pytest.mark.slow
def test_sample_keys_that_match_nothing_stop_before_training(small_demo, tmp_path):
    """data.keys.image=[jpg] on shards of png: the image source would train on nothing."""
    result = run_cli(
        "clipkit-train",
        [
            *demo_overrides(small_demo),
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.max_steps=2",
            "eval=none",
            "data.keys.image=[jpg]",
        ],
        tmp_path,
    )
    error = one_line_error(result)
    assert "data.train.shards[0]" in error and "image_text" in error, error
    assert "['png', 'txt']" in error and "data.keys.image=['jpg']" in error, error
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.faults
@pytest.mark.slow
def test_an_eval_set_read_short_says_so_in_its_result(trained, small_demo, tmp_path):
    shapes = tmp_path / "shapes"
    shutil.copytree(small_demo / "eval" / "shapes", shapes)
    expected = sum(json.loads((shapes / "test" / "sizes.json").read_text()).values())
    shard = shapes / "test" / "0.tar"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    result = evaluate(trained, shapes, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "broken.json").read_text())["metrics"]
    assert 0 < metrics["missing_samples"] < expected
    assert metrics["num_samples"] + metrics["missing_samples"] == expected
    assert (
        f"eval set broken: {metrics['missing_samples']} of its {expected} samples could not be read"
        in result.stdout + result.stderr
    )
