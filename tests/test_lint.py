"""The code passes the repo's lint (ruff.toml) and format (pyproject.toml: pyink) settings."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["pyink", "--check", "--quiet", "."],
    ],
    ids=["ruff", "pyink"],
)
def test_code_passes_lint_and_format(command):
  result = subprocess.run(
      [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  fix = "ruff check --fix ." if command[0] == "ruff" else "pyink ."
  assert result.returncode == 0, (
      f"{' '.join(command)} failed; run `{fix}`:\n" + (result.stdout + result.stderr)[-4000:]
  )
