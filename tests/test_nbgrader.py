"""nbgrader's own CLI, end to end, per chapter: the reference scores full marks and the
unmodified release scores zero (generate_assignment -> autograde -> export)."""

import csv
import shutil
import subprocess

import pytest

from autograde.trusted import synthetic
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
    course = synthetic.scratch_course(tmp_path / "course", [name])
    nbgrader(course, "generate_assignment", name, "--force")
    submissions = {
        "reference": AUTOGRADE / "source" / name / f"{name}.ipynb",
        "blank": course / "release" / name / f"{name}.ipynb",
    }
    for student, notebook in submissions.items():
        folder = course / "submitted" / student / name
        folder.mkdir(parents=True)
        shutil.copy(notebook, folder / f"{name}.ipynb")
    nbgrader(course, "autograde", name, "--create", "--force")
    nbgrader(course, "export", "--to", str(course / "grades.csv"))
    rows = {r["student_id"]: r for r in csv.DictReader(open(course / "grades.csv"))}
    total = sum(c.metadata["points"] for c in chapter.cells("tests"))
    assert float(rows["reference"]["max_score"]) == total
    assert float(rows["reference"]["score"]) == total
    assert float(rows["blank"]["score"]) == 0
