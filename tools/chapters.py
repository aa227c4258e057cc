"""Read the instructor sources in solutions/ and describe their cells.

A source is a jupytext MyST notebook, ``solutions/NN-slug.md``. Its code cells use three
options, which this module turns into nbgrader metadata so authors never write that by hand:

* ``:tags: [solution]`` with ``:grade_id:`` and ``:export: MODULE`` -- an exercise. The
  reference sits between ``### BEGIN SOLUTION`` / ``### END SOLUTION``; the whole cell, with
  the markers removed, becomes part of ``course_lib/MODULE.py``.
* ``:tags: [tests]`` with ``:grade_id:`` and ``:points:`` -- the checks of one exercise,
  visible ones first, hidden ones between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``.
* ``:export: MODULE`` without the solution tag -- given library code (read-only for students).

Every other cell passes through unchanged.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "solutions"

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
OUR_KEYS = ("grade_id", "points", "export")
OUR_TAGS = ("solution", "tests")


class SourceError(ValueError):
    """An instructor source breaks the conventions above."""


@dataclass
class Chapter:
    name: str  # "02-scaled-dot-product-attention": also the nbgrader assignment name
    path: Path
    notebook: nbformat.NotebookNode = field(repr=False)

    @property
    def title(self) -> str:
        first = self.notebook.cells[0].source.splitlines()[0]
        return first.lstrip("# ").strip()

    def cells(self, kind: str):
        """The code cells tagged ``kind`` ("solution" or "tests")."""
        return [c for c in self.notebook.cells if kind in c.metadata.get("tags", [])]

    def public_lines(self) -> set[str]:
        """Every line of the chapter outside solution regions and hidden tests, stripped."""
        return {ln.strip() for c in self.notebook.cells for ln in split_secret(c.source)[0]}

    def secret_lines(self, public: set[str] = frozenset()) -> list[str]:
        """Lines only the instructor may see: solution regions and hidden tests, stripped.

        Left out: lines shorter than 12 characters (``else:``) and lines that also appear in
        the chapter's public cells, or in ``public`` (another chapter's, say: a later chapter's
        given code may well say ``return output, weights``): neither can prove a leak.
        """
        secret = [ln.strip() for c in self.notebook.cells for ln in split_secret(c.source)[1]]
        public = self.public_lines() | set(public)
        return [ln for ln in secret if len(ln) >= 12 and ln not in public]

    def exports(self) -> list[tuple[str, nbformat.NotebookNode]]:
        """(module, cell) for every cell that goes into course_lib, in notebook order."""
        return [(c.metadata["export"], c) for c in self.notebook.cells if "export" in c.metadata]


def defined_names(source: str) -> list[str]:
    """Top-level functions and classes a code cell defines."""
    tree = ast.parse(strip_markers(source))
    kinds = (ast.FunctionDef, ast.ClassDef)
    return [node.name for node in tree.body if isinstance(node, kinds)]


def strip_markers(source: str) -> str:
    """The reference code with the solution markers removed."""
    keep = [ln for ln in source.splitlines() if ln.strip() not in (BEGIN_SOLUTION, END_SOLUTION)]
    return "\n".join(keep)


def split_secret(source: str) -> tuple[list[str], list[str]]:
    """A cell's lines outside and inside its solution and hidden-test regions (markers dropped)."""
    outside, inside, secret = [], [], False
    for line in source.splitlines():
        if line.strip() in (BEGIN_SOLUTION, BEGIN_HIDDEN):
            secret = True
        elif line.strip() in (END_SOLUTION, END_HIDDEN):
            secret = False
        else:
            (inside if secret else outside).append(line)
    return outside, inside


def load(path: Path) -> Chapter:
    name = path.stem
    if not re.fullmatch(r"\d\d-[a-z0-9-]+", name):
        raise SourceError(f"{path}: name sources NN-slug.md, e.g. 02-scaled-dot-product-attention")
    nb = jupytext.read(path, fmt="md:myst")
    chapter = Chapter(name=name, path=path, notebook=nb)
    _validate(chapter)
    return chapter


def load_all() -> list[Chapter]:
    return [load(p) for p in sorted(SOURCES.glob("[0-9][0-9]-*.md"))]


def _validate(ch: Chapter) -> None:
    seen: set[str] = set()
    first = ch.notebook.cells[0] if ch.notebook.cells else None
    if first is None or first.cell_type != "markdown" or not first.source.startswith("# "):
        raise SourceError(f"{ch.path}: the first cell must be markdown starting with '# Title'")
    for cell in ch.notebook.cells:
        tags = cell.metadata.get("tags", [])
        where = f"{ch.path}: cell {cell.source.splitlines()[0] if cell.source else '(empty)'!r}"
        gid = cell.metadata.get("grade_id")
        if gid is not None:
            if gid in seen:
                raise SourceError(f"{where}: grade_id {gid!r} used twice")
            seen.add(gid)
        if "solution" in tags:
            if gid is None or "export" not in cell.metadata:
                raise SourceError(f"{where}: a solution cell needs :grade_id: and :export:")
            if BEGIN_SOLUTION not in cell.source or END_SOLUTION not in cell.source:
                raise SourceError(f"{where}: a solution cell needs the solution markers")
            if not defined_names(cell.source):
                raise SourceError(f"{where}: a solution cell must define a function or class")
        if "tests" in tags and (gid is None or "points" not in cell.metadata):
            raise SourceError(f"{where}: a tests cell needs :grade_id: and :points:")
