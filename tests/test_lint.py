"""The code is ruff-clean (the rules are in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

from tools.chapters import ROOT


def test_ruff_check_passes():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
