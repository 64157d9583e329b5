"""The installed `treasure` command: its help, a clear error for an unknown command, and one real
stage run from outside the repository (its own config file, a local Ray cluster, a sqlite MLflow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from treasure import storage
from treasure.cli import main


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0 and "treasure pipeline --config" in capsys.readouterr().out
    assert main(["frob"]) == 2 and "unknown command 'frob'; commands: pipeline, normalize" in capsys.readouterr().err


def test_installed_command_runs_a_stage_outside_the_repository(tmp_path):
    command = shutil.which("treasure", path=str(Path(sys.executable).parent))
    assert command, "the package's console script is not installed (pip install -e .)"
    chats = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
             for i in range(5)]
    (tmp_path / "chats.jsonl").write_text("\n".join(json.dumps(c) for c in chats))
    (tmp_path / "mine.yaml").write_text(
        "normalize:\n  input: .\n  output: out/normalized\n  experiment: cli-test\n"
        "  sources:\n    chats: {type: file, path: '*.jsonl', shape: messages, language: English}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    done = subprocess.run([command, "normalize", "--config", "mine.yaml", "sources.chats.max_rows=3"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = storage.read_manifest(str(tmp_path / "out" / "normalized"))
    assert manifest["rows_per_source"] == {"chats": 3} and manifest["capped_per_source"] == {"chats": 2}
    assert json.loads(done.stdout[done.stdout.index("{"):])["metrics"]["rows"] == 3


@pytest.mark.parametrize("argv", [["pipeline", "--help"], ["tune", "--help"], ["annotate", "--help"]])
def test_every_subcommand_parses_its_arguments(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and f"usage: treasure {argv[0]}" in capsys.readouterr().out


def test_serve_is_serve_run_on_the_package_app(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0 and "Usage: treasure serve [OPTIONS] CONFIG_OR_IMPORT_PATH" in capsys.readouterr().out
