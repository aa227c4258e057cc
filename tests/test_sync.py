"""The single-source pipeline: every generated file is up to date and output-free."""

import json

from tools import sync
from tools.chapters import ROOT, load_all


def test_generated_files_are_up_to_date():
    problems = sync.stale(sync.generate())
    assert not problems, "run `make sync`:\n" + "\n".join(problems)


def test_notebooks_are_stored_without_outputs():
    for path in [*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("autograde/*/*/*.ipynb")]:
        for cell in json.loads(path.read_text())["cells"]:
            assert not cell.get("outputs"), f"{path} has outputs"


def test_every_exercise_has_one_graded_test_cell():
    for ch in load_all():
        exercises = [c.metadata["grade_id"] for c in ch.cells("solution")]
        tests = [c.metadata["grade_id"] for c in ch.cells("tests")]
        assert tests == [f"{gid}_tests" for gid in exercises], ch.name


def test_release_has_no_solution_or_hidden_test_line():
    for ch in load_all():
        release = (ROOT / "chapters" / f"{ch.name}.ipynb").read_text()
        for line in ch.secret_lines():
            assert json.dumps(line)[1:-1] not in release, f"{ch.name} leaks {line!r}"
