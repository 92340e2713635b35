"""clipkit-data's eval sets from a user's files: what they hold, read back by the eval loader, and
the one-line errors that stop before anything is written."""

from __future__ import annotations

import json

import pytest
import webdataset as wds
from PIL import Image

from clipkit.cli.data import main as clipkit_data
from clipkit.data.eval_ingest import write_captioned, write_class_folders
from clipkit.data.ingest import checked_pairs, table_pairs
from clipkit.errors import DataError
from clipkit.eval.datasets import EvalDatasetConfig, open_eval_set


def _image(path, colour="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _samples(root):
    return list(wds.WebDataset(str(root / "test" / "0.tar"), shardshuffle=False))


def test_class_folders_become_a_zero_shot_set_in_clip_benchmarks_layout(tmp_path):
    for colour in ("red", "dark_blue"):
        for i in range(2):
            _image(tmp_path / "src" / colour / "nested" / f"{i}.jpg", colour.split("_")[-1])
    (tmp_path / "src" / "empty").mkdir()  # a folder without media is no class
    written = write_class_folders(tmp_path / "src", tmp_path / "set", per_shard=3)
    assert (written.task, written.modality) == ("zeroshot_classification", "image")
    assert (written.samples, written.shards) == (4, 2)
    eval_set = open_eval_set("mine", EvalDatasetConfig(root=str(tmp_path / "set")))
    assert eval_set.classnames == ["dark blue", "red"] and eval_set.templates == ["a photo of a {c}."]
    assert eval_set.expected_samples == 4
    assert [s["cls"] for s in _samples(tmp_path / "set")] == [b"0", b"0", b"1"]
    assert written.overrides() == (
        f"""'+eval.datasets.set.root="{tmp_path / "set"}"' +eval.datasets.set.task=zeroshot_classification"""
    )


def test_class_names_and_templates_from_files_and_their_errors(tmp_path):
    for colour in ("a", "b"):
        _image(tmp_path / "src" / colour / "0.png")
    (tmp_path / "names.txt").write_text("apple\nbanana\n")
    (tmp_path / "prompts.txt").write_text("{c}\na picture of {c}\n")
    write_class_folders(tmp_path / "src", tmp_path / "set", tmp_path / "names.txt", tmp_path / "prompts.txt")
    eval_set = open_eval_set("mine", EvalDatasetConfig(root=str(tmp_path / "set")))
    assert eval_set.classnames == ["apple", "banana"] and eval_set.templates == ["{c}", "a picture of {c}"]

    (tmp_path / "three.txt").write_text("x\ny\nz\n")
    with pytest.raises(DataError, match="3 class names for 2 class folders"):
        write_class_folders(tmp_path / "src", tmp_path / "s2", tmp_path / "three.txt")
    (tmp_path / "bad.txt").write_text("a photo\n")
    with pytest.raises(DataError, match="template without a {c} placeholder"):
        write_class_folders(tmp_path / "src", tmp_path / "s3", templates_file=tmp_path / "bad.txt")
    (tmp_path / "src" / "b" / "1.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match="one modality; found audio, image"):
        write_class_folders(tmp_path / "src", tmp_path / "s4")
    assert not any((tmp_path / name).exists() for name in ("s2", "s3", "s4"))


def test_a_tables_rows_naming_one_file_give_it_every_caption(tmp_path):
    for name in ("x", "y"):
        _image(tmp_path / f"{name}.jpg")
    rows = [("x.jpg", "first of x"), ("y.jpg", "only y"), ("x.jpg", "second of x")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, c in rows))
    pairs = checked_pairs(table_pairs(tmp_path / "pairs.jsonl", "path", "caption"))
    written = write_captioned(pairs, tmp_path / "pairs.jsonl", tmp_path / "set")
    assert (written.task, written.samples) == ("retrieval", 2)
    assert [s["txt"] for s in _samples(tmp_path / "set")] == [b"first of x\nsecond of x", b"only y"]
    assert (tmp_path / "set" / "dataset_type.txt").read_text() == "retrieval\n"


def test_clipkit_data_refuses_a_folder_in_use_and_a_bad_row_before_writing(tmp_path, capsys):
    _image(tmp_path / "x.jpg")
    (tmp_path / "pairs.csv").write_text("path,caption\nx.jpg,an x\nmissing.jpg,lost\n")
    for command in ("table", "eval-captions"):
        with pytest.raises(SystemExit) as stop:
            clipkit_data([command, str(tmp_path / "pairs.csv"), str(tmp_path / command)])
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip() == f"clipkit-data: error: {tmp_path / 'missing.jpg'}: file not found"
        assert not (tmp_path / command).exists()  # nothing half-written

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.tar").write_bytes(b"keep")
    with pytest.raises(SystemExit) as stop:
        clipkit_data(["folder", str(tmp_path), str(tmp_path / "used")])
    assert stop.value.code == 2 and "exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "used" / "mine.tar").read_bytes() == b"keep"
