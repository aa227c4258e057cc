"""nbgrader's own CLI, end to end, per chapter: the reference scores full marks and the
unmodified release scores zero (generate_assignment -> autograde -> export)."""

import csv
import shutil
import subprocess

import pytest

from tools.chapters import ROOT, load_all
from tools.sync import venv_env

pytestmark = pytest.mark.slow
AUTOGRADE = ROOT / "autograde"


def nbgrader(course, *args):
    result = subprocess.run(
        ["nbgrader", *args], cwd=course, env=venv_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("chapter", load_all(), ids=lambda c: c.name)
def test_reference_full_marks_and_blank_zero(tmp_path, chapter):
    name = chapter.name
    shutil.copy(AUTOGRADE / "nbgrader_config.py", tmp_path)
    shutil.copytree(AUTOGRADE / "hidden_checks", tmp_path / "hidden_checks")
    shutil.copytree(AUTOGRADE / "source" / name, tmp_path / "source" / name)
    nbgrader(tmp_path, "generate_assignment", name, "--force")
    submissions = {
        "reference": AUTOGRADE / "source" / name / f"{name}.ipynb",
        "blank": tmp_path / "release" / name / f"{name}.ipynb",
    }
    for student, notebook in submissions.items():
        folder = tmp_path / "submitted" / student / name
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / f"{name}.ipynb")
    nbgrader(tmp_path, "autograde", name, "--create", "--force")
    nbgrader(tmp_path, "export", "--to", str(tmp_path / "grades.csv"))
    rows = {r["student_id"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    total = sum(c.metadata["points"] for c in chapter.cells("tests"))
    assert float(rows["reference"]["max_score"]) == total
    assert float(rows["reference"]["score"]) == total
    assert float(rows["blank"]["score"]) == 0
