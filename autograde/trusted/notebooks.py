"""Reading notebooks defensively, and the order in which a submission's cells are graded.

A submission is untrusted JSON: it may be invalid, huge, or have cells that were deleted,
edited, moved or duplicated. Grading follows the *source* notebook, as nbgrader's
``OverwriteCells`` does (with ``add_missing_cells``): locked cells (test cells and given code)
are restored from the source wherever the student left them, a test cell the student deleted
is put back after the cell that preceded it in the source, and the student's own cells run in
the order they submitted them. The test cells' code (hidden tests included) comes only from
the source notebook, so deleting or editing a test cell can neither skip nor weaken it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
MAX_CELLS = 5000
MAX_CELL_METADATA = 10_000  # bytes of a student cell's own metadata kept in the graded copy
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


class InvalidNotebook(Exception):
    """The submission is not a notebook we can grade (the message says why)."""


def text_of(source) -> str:
    if isinstance(source, list):
        if not all(isinstance(part, str) for part in source):
            raise InvalidNotebook("a cell's source is not text")
        return "".join(source)
    if not isinstance(source, str):
        raise InvalidNotebook("a cell's source is not text")
    return source


def read(path: Path) -> dict:
    """The notebook at ``path`` as a dict with a list of well-formed cells."""
    path = Path(path)
    if not path.is_file():
        raise InvalidNotebook(f"no notebook {path.name} was submitted")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise InvalidNotebook(f"{path.name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MiB")
    try:
        nb = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:
        raise InvalidNotebook(f"{path.name} is not valid JSON ({error})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise InvalidNotebook(f"{path.name} is not a Jupyter notebook (no list of cells)")
    if len(nb["cells"]) > MAX_CELLS:
        raise InvalidNotebook(f"{path.name} has more than {MAX_CELLS} cells")
    cells = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            raise InvalidNotebook(f"{path.name} has a malformed cell")
        metadata = cell.get("metadata")
        cells.append(
            {
                "cell_type": cell["cell_type"],
                "source": text_of(cell.get("source", "")),
                "metadata": metadata if isinstance(metadata, dict) else {},
            }
        )
    return {"cells": cells, "metadata": nb.get("metadata") if isinstance(nb, dict) else {}}


def grading_of(cell: dict) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


@dataclass
class SourceCell:
    grade_id: str
    cell_type: str
    source: str  # what runs: the test code with hidden tests, or the given code
    grading: dict  # the source's nbgrader metadata

    @property
    def is_test(self) -> bool:
        g = self.grading
        return bool(g.get("grade")) and not g.get("solution") and self.cell_type == "code"

    @property
    def locked(self) -> bool:
        return bool(self.grading.get("locked")) and not self.grading.get("solution")

    @property
    def points(self) -> float:
        return float(self.grading.get("points", 0))


@dataclass
class Step:
    """One cell of the autograded notebook, in order."""

    kind: str  # "student" (run in the sandbox), "given" (same, restored), "test", "markdown"
    cell_type: str
    source: str
    metadata: dict = field(default_factory=dict)
    grade_id: str | None = None
    origin: str = "submitted"  # "submitted", "restored" (locked, from the source), "re-added"


def strip_hidden(source: str) -> str:
    keep, inside = [], False
    for line in source.splitlines(keepends=True):
        if line.strip() == BEGIN_HIDDEN:
            inside = True
        elif line.strip() == END_HIDDEN:
            inside = False
        elif not inside:
            keep.append(line)
    return "".join(keep)


def source_cells(source_nb: dict, release_nb: dict | None) -> list[SourceCell]:
    """The source notebook's cells that carry nbgrader metadata, in order."""
    released = {}
    for cell in (release_nb or {}).get("cells", []):
        gid = grading_of(cell).get("grade_id")
        if isinstance(gid, str):
            released[gid] = cell["source"]
    cells = []
    for cell in source_nb["cells"]:
        grading = grading_of(cell)
        gid = grading.get("grade_id")
        if not isinstance(gid, str):
            continue
        sc = SourceCell(gid, cell["cell_type"], cell["source"], grading)
        if not sc.is_test:  # what students see: never a hidden test, never a solution
            sc.source = released.get(gid, strip_hidden(cell["source"]))
        cells.append(sc)
    return cells


def plan(sources: list[SourceCell], submitted: dict) -> list[Step]:
    """The cells to run for ``submitted``, in order (see the module docstring)."""
    by_id = {c.grade_id: c for c in sources}
    steps: list[Step] = []
    seen: set[str] = set()
    for cell in submitted["cells"]:
        gid = grading_of(cell).get("grade_id")
        sc = by_id.get(gid) if isinstance(gid, str) and gid not in seen else None
        if sc is None:
            kind = "student" if cell["cell_type"] == "code" else "markdown"
            metadata = {k: v for k, v in cell["metadata"].items() if k != "nbgrader"}
            if len(json.dumps(metadata)) > MAX_CELL_METADATA:
                metadata = {}
            steps.append(Step(kind, cell["cell_type"], cell["source"], metadata))
            continue
        seen.add(sc.grade_id)
        metadata = {"nbgrader": dict(sc.grading)}
        if sc.locked:
            kind = "test" if sc.is_test else ("given" if sc.cell_type == "code" else "markdown")
            steps.append(Step(kind, sc.cell_type, sc.source, metadata, sc.grade_id, "restored"))
        else:
            kind = "student" if cell["cell_type"] == "code" else "markdown"
            steps.append(Step(kind, cell["cell_type"], cell["source"], metadata, sc.grade_id))
    order = [c.grade_id for c in sources]
    for index, sc in enumerate(sources):
        if sc.grade_id in seen or not sc.is_test:
            continue
        position = 0
        for previous in reversed(order[:index]):
            at = [i for i, s in enumerate(steps) if s.grade_id == previous]
            if at:
                position = at[0] + 1
                break
        metadata = {"nbgrader": dict(sc.grading)}
        steps.insert(position, Step("test", "code", sc.source, metadata, sc.grade_id, "re-added"))
        seen.add(sc.grade_id)
    return steps
