"""Synthetic submissions, built from an assignment's source and release notebooks.

For the benchmark, the tests, and an instructor's dry run of a grading setup: the reference
solution as a student would submit it, the blank release, a partly done notebook, and edits
of them (one exercise replaced, a cell added, test cells deleted). They follow the notebooks,
so they stay in sync with the chapters without storing any copy.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


COURSE = Path(__file__).resolve().parent.parent  # autograde/, the nbgrader course root


def scratch_course(folder: Path, chapters: list[str]) -> Path:
    """A throwaway nbgrader course in ``folder``: the config, the hidden checks, and these
    chapters' source and release notebooks (for tests and benchmarks)."""
    folder.mkdir(parents=True)
    shutil.copy(COURSE / "nbgrader_config.py", folder)
    shutil.copytree(
        COURSE / "hidden_checks",
        folder / "hidden_checks",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in chapters:
        for step in ("source", "release"):
            shutil.copytree(COURSE / step / name, folder / step / name)
    return folder


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _grading(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercises(release: dict) -> list[str]:
    """The grade ids of the solution cells, in order."""
    return [_grading(c)["grade_id"] for c in release["cells"] if _grading(c).get("solution")]


def solutions(source: dict) -> dict[str, str]:
    """grade id -> the reference code of each solution cell (markers removed)."""
    out = {}
    for cell in source["cells"]:
        if _grading(cell).get("solution"):
            lines = _source(cell).splitlines(keepends=True)
            out[_grading(cell)["grade_id"]] = "".join(
                line for line in lines if line.strip() not in SOLUTION_MARKERS
            )
    return out


def blank(release: dict) -> dict:
    return copy.deepcopy(release)


def with_code(nb: dict, codes: dict[str, str]) -> dict:
    """``nb`` with the solution cells named in ``codes`` replaced by that code."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        gid = _grading(cell).get("grade_id")
        if _grading(cell).get("solution") and gid in codes:
            cell["source"] = codes[gid]
    return nb


def reference(source: dict, release: dict) -> dict:
    return with_code(release, solutions(source))


def partly(source: dict, release: dict, done: set[int]) -> dict:
    """The reference for the exercises numbered in ``done`` (0-based), stubs for the rest."""
    names = exercises(release)
    reference_code = solutions(source)
    return with_code(release, {names[i]: reference_code[names[i]] for i in done})


def add_cell(nb: dict, code: str, after: str | None = None) -> dict:
    """``nb`` with a new code cell after the cell ``after`` (grade id), or at the end."""
    nb = copy.deepcopy(nb)
    cell = {"cell_type": "code", "metadata": {}, "source": code, "outputs": []}
    cell["execution_count"] = None
    index = len(nb["cells"])
    if after is not None:
        index = 1 + next(
            i for i, c in enumerate(nb["cells"]) if _grading(c).get("grade_id") == after
        )
    nb["cells"].insert(index, cell)
    return nb


def drop_cells(nb: dict, grade_ids: set[str]) -> dict:
    nb = copy.deepcopy(nb)
    nb["cells"] = [c for c in nb["cells"] if _grading(c).get("grade_id") not in grade_ids]
    return nb


def edit_cell(nb: dict, grade_id: str, code: str) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if _grading(cell).get("grade_id") == grade_id:
            cell["source"] = code
    return nb


def submit(nb: dict | str, course_root: Path, student: str, assignment: str, name: str) -> Path:
    """Put ``nb`` (a notebook, or raw text) where nbgrader expects a submission."""
    folder = Path(course_root) / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    path.write_text(nb if isinstance(nb, str) else json.dumps(nb, indent=1))
    return path
