"""Run a chapter's graded test cells against any implementation of its exercises, fast.

This is what nbgrader does when it autogrades (run the student's cells, then each test cell,
hidden checks included), minus the kernel and the notebook: the mutant and alternative tests
use it to prove every known bug loses the points of its own exercise, and nothing else.
"""

from __future__ import annotations

import contextlib
import io

import nbformat

from tools.chapters import ROOT, Chapter, strip_markers


def namespace(chapter: Chapter, replacement: str = "", released: bool = False) -> dict:
    """The library cells of ``chapter`` executed in order, then ``replacement``.

    By default these are the reference solutions; ``released`` takes them from the student
    notebook that nbgrader generated instead (stubs that raise NotImplementedError).
    ``replacement`` is code that redefines some exercises: a mutant, an alternative.
    """
    ns: dict = {"__name__": f"exercises_{chapter.name.replace('-', '_')}"}
    if released:
        nb = nbformat.read(ROOT / "chapters" / f"{chapter.name}.ipynb", as_version=4)
        library = [c.source for c in nb.cells if _is_library(c)]
    else:
        library = [strip_markers(cell.source) for _, cell in chapter.exports()]
    for code in library + [replacement]:
        exec(compile(code, chapter.name, "exec"), ns)
    return ns


def _is_library(cell) -> bool:
    grading = cell.metadata.get("nbgrader", {})
    return grading.get("solution", False) or grading.get("grade_id", "").startswith("given-")


def scores(chapter: Chapter, ns: dict) -> dict[str, int]:
    """Points each test cell (visible and hidden checks) awards to the code in ``ns``."""
    points = {}
    for cell in chapter.cells("tests"):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(cell.source, cell.metadata["grade_id"], "exec"), dict(ns))
            points[cell.metadata["grade_id"]] = cell.metadata["points"]
        except Exception:
            points[cell.metadata["grade_id"]] = 0
    return points


def templated(exercise: str, template: str, defaults: dict[str, str]):
    """A maker of mutants of one exercise: ``make(**changes)`` is (the test cell that must
    fail, ``template`` filled with ``defaults`` updated by ``changes``)."""

    def make(**changes: str) -> tuple[str, str]:
        return exercise, template.format(**{**defaults, **changes})

    return make


def full_marks(chapter: Chapter) -> dict[str, int]:
    return {c.metadata["grade_id"]: c.metadata["points"] for c in chapter.cells("tests")}


class GradingContract:
    """What grading guarantees for a chapter; a test class per chapter fills in the cases.

    ``alternatives`` maps a name to correct code written differently (full marks);
    ``mutants`` maps a bug class to (the test cell that must fail, the buggy code).
    ``prelude`` is prepended to every case (shared imports).
    """

    chapter: Chapter
    alternatives: dict[str, str]
    mutants: dict[str, tuple[str, str]]
    prelude: str = ""

    @classmethod
    def cases(cls, kind: str):
        table = cls.alternatives if kind == "alternative" else cls.mutants
        return list(table.values()), list(table)

    def test_reference_earns_full_marks(self):
        assert scores(self.chapter, namespace(self.chapter)) == full_marks(self.chapter)

    def test_blank_release_earns_nothing(self):
        earned = scores(self.chapter, namespace(self.chapter, released=True))
        assert earned == dict.fromkeys(full_marks(self.chapter), 0)

    def test_correct_alternative_earns_full_marks(self, alternative):
        ns = namespace(self.chapter, self.prelude + alternative)
        assert scores(self.chapter, ns) == full_marks(self.chapter)

    def test_mutant_loses_only_its_exercise(self, mutant):
        exercise, code = mutant
        expected = {**full_marks(self.chapter), exercise: 0}
        assert scores(self.chapter, namespace(self.chapter, self.prelude + code)) == expected
