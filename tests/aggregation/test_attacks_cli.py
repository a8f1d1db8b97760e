"""``python -m tests.aggregation.attacks --help`` prints its usage and runs nothing; a bad
argument is refused before any experiment starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.aggregation.attacks import parse_args

REPO = Path(__file__).resolve().parents[2]


def test_help_prints_the_usage_and_runs_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.aggregation.attacks", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m tests.aggregation.attacks [-h] [--rounds")
    assert "Poisoned updates" in proc.stdout and "--rounds ROUNDS" in proc.stdout
    assert "default settings:" not in proc.stdout  # no table was started


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--rounds", "x"], ["--strategy", "krum"]])
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "python -m tests.aggregation.attacks: error: ")


def test_the_defaults_are_the_readme_table() -> None:
    assert parse_args([]).rounds == 10 and parse_args(["--rounds", "3"]).rounds == 3
