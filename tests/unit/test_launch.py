"""The console scripts: each imports its command with the garbage collector paused, then freezes that
heap; the KEY=VALUE commands answer --help."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import gc
ENABLED_WHILE_IMPORTING = gc.isenabled()
import torch  # a heavy import, as a real command's


def main():
    print(ENABLED_WHILE_IMPORTING, gc.isenabled(), gc.get_freeze_count() > 10_000)
"""


def _run(code: str, tmp_path: Path) -> str:
    (tmp_path / "probe_command.py").write_text(PROBE)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_console_script_imports_without_collection_then_runs_with_the_heap_frozen(tmp_path):
    out = _run("from clipkit.cli.launch import _run; _run('probe_command')", tmp_path)
    assert out == "False True True"


def test_python_m_entry_freezes_what_is_imported(tmp_path):
    out = _run("import probe_command; from clipkit.cli.launch import run_main; run_main(probe_command.main)", tmp_path)
    assert out == "True True True"


def test_every_console_script_goes_through_the_launcher():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("clipkit-")}
    assert scripts == {
        "clipkit-train": "clipkit.cli.launch:train",
        "clipkit-eval": "clipkit.cli.launch:evaluate",
        "clipkit-data": "clipkit.cli.launch:data",
        "clipkit-export": "clipkit.cli.launch:export",
    }


@pytest.mark.parametrize("program", ["eval", "export"])
def test_help_prints_the_usage_and_exits_0(program, capsys):
    import importlib

    importlib.import_module(f"clipkit.cli.{program}").main(["--help"])
    assert capsys.readouterr().out.startswith(f"clipkit-{program} checkpoint=PATH")
