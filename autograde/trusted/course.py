"""The nbgrader course the command works on, and the gradebook records it writes.

The course is the folder holding ``nbgrader_config.py`` (``autograde/`` here): its config is
loaded exactly as nbgrader loads it, so the course id, the folder names and the gradebook URL
are the ones ``nbgrader autograde`` and ``nbgrader export`` use. Grades are written with
nbgrader's own API, the way its ``SaveAutoGrades`` and ``AssignLatePenalties`` preprocessors
write them, and each test cell's score comes from nbgrader's own ``determine_grade`` applied
to the outputs the judge recorded: a cell that raised scores 0, as does one that wrote to
stderr, exactly as in plain nbgrader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Course:
    """The course's paths, from its nbgrader config. Importing nbgrader takes seconds here, so
    paths are resolved the way nbgrader's ``CourseDirectory`` does, without it; the gradebook
    functions import it when they need it."""

    root: Path
    config: object  # traitlets Config, as nbgrader loads it

    @classmethod
    def load(cls, root: Path) -> Course:
        from traitlets.config.loader import PyFileConfigLoader

        root = Path(root).resolve()
        bin_dir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` by name
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
        config.CourseDirectory.root = str(root)
        return cls(root, config)

    def _setting(self, name: str, default: str) -> str:
        value = self.config.CourseDirectory.get(name)
        return value if isinstance(value, str) and value else default

    @property
    def db_url(self) -> str:
        default = "sqlite:///" + os.path.abspath(os.path.join(self.root, "gradebook.db"))
        return self._setting("db_url", default)

    @property
    def course_id(self) -> str:
        return self._setting("course_id", "")

    def directory(self, step: str) -> str:
        defaults = {
            "source": "source",
            "release": "release",
            "submitted": "submitted",
            "autograded": "autograded",
            "feedback": "feedback",
        }
        return self._setting(f"{step}_directory", defaults[step])

    def folder(self, step: str, student: str, assignment: str) -> Path:
        structure = self._setting(
            "directory_structure",
            os.path.join("{nbgrader_step}", "{student_id}", "{assignment_id}"),
        )
        relative = structure.format(
            nbgrader_step=self.directory(step), student_id=student, assignment_id=assignment
        )
        return Path(os.path.normpath(os.path.join(self.root, relative)))

    def source_notebooks(self, assignment: str) -> list[Path]:
        return sorted(self.folder("source", ".", assignment).glob("*.ipynb"))

    def release_notebook(self, assignment: str, name: str) -> Path | None:
        path = self.folder("release", ".", assignment) / f"{name}.ipynb"
        return path if path.is_file() else None

    def students(self, assignment: str) -> list[str]:
        from .submission import students

        return students(self.root / self.directory("submitted"), assignment)

    def submitted(self, student: str, assignment: str) -> Path:
        return self.folder("submitted", student, assignment)

    def autograded(self, student: str, assignment: str) -> Path:
        return self.folder("autograded", student, assignment)

    def feedback(self, student: str, assignment: str) -> Path:
        return self.folder("feedback", student, assignment)

    def generate_assignment(self, assignment: str, into: Path) -> Path:
        """Run nbgrader's generate_assignment on the source into a scratch course: it records
        the assignment's notebooks and cells in the real gradebook (as the instructor's own
        generate_assignment does) and returns the scratch release folder."""
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory
        from traitlets.config import Config

        source = self.folder("source", ".", assignment)
        scratch = Path(into)
        shutil.copytree(source, scratch / "source" / assignment)
        config = Config(self.config)
        config.merge(
            Config(
                {
                    "CourseDirectory": {"root": str(scratch), "db_url": self.db_url},
                    "NbGraderAPI": {"log_level": "WARN"},
                }
            )
        )
        coursedir = CourseDirectory(config=config)
        api = NbGraderAPI(coursedir=coursedir, config=config)
        result = api.generate_assignment(assignment, force=True, create=True)
        if not result.get("success"):
            raise RuntimeError(
                f"nbgrader generate_assignment failed for {assignment}:\n"
                f"{result.get('error') or result.get('log')}"
            )
        return scratch / "release" / assignment


def determine_scores(notebook: dict | None, grade_cells: dict[str, float]) -> dict[str, float]:
    """Each grade cell's auto score, by nbgrader's rules, from an autograded notebook."""
    from nbformat import from_dict
    from nbgrader.utils import determine_grade

    scores = dict.fromkeys(grade_cells, 0.0)
    if notebook is None:
        return scores
    for cell in notebook["cells"]:
        grading = cell.get("metadata", {}).get("nbgrader", {})
        gid = grading.get("grade_id")
        if gid in grade_cells and grading.get("grade"):
            node = from_dict(cell)
            node.metadata.nbgrader["points"] = grade_cells[gid]
            score, _ = determine_grade(node)
            scores[gid] = score
    return scores


def unchanged_solutions(notebook: dict | None, release: dict | None) -> set[str]:
    """The solution cells the student left exactly as released ("No response.")."""
    if notebook is None or release is None:
        return set()
    released = {}
    for cell in release["cells"]:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid:
            released[gid] = cell["source"]
    same = set()
    for cell in notebook["cells"]:
        grading = cell.get("metadata", {}).get("nbgrader", {})
        gid = grading.get("grade_id")
        if grading.get("solution") and gid in released:
            text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            if text == released[gid]:
                same.add(gid)
    return same


def write_grades(course: Course, assignment: str, student: str, record: dict) -> None:
    """Put one student's result into the gradebook (idempotent)."""
    from nbgrader.api import Gradebook

    timestamp = record.get("timestamp")  # validated when the submission was read
    if timestamp:
        from nbgrader.utils import parse_utc

        timestamp = parse_utc(timestamp)
    with warnings.catch_warnings(), Gradebook(course.db_url, course.course_id) as gb:
        warnings.simplefilter("ignore")  # SQLAlchemy's SAWarnings from nbgrader's own API
        gb.update_or_create_student(student)
        if timestamp:
            submission = gb.update_or_create_submission(assignment, student, timestamp=timestamp)
        else:
            submission = gb.update_or_create_submission(assignment, student)
        for name, result in record["notebooks"].items():
            for gid, score in result["scores"].items():
                grade = gb.find_grade(gid, name, assignment, student)
                grade.auto_score = score
                grade.needs_manual_grade = grade.manual_score is not None or score is None
            for comment in gb.find_submission_notebook(name, assignment, student).comments:
                unchanged = comment.name in result.get("unchanged", [])
                comment.auto_comment = "No response." if unchanged else None
        gb.db.commit()
        plugin = _late_plugin(course)
        for name in record["notebooks"]:
            notebook = gb.find_submission_notebook(name, assignment, student)
            notebook.late_submission_penalty = None
            if submission.total_seconds_late > 0:
                penalty = plugin.late_submission_penalty(
                    student, notebook.score, submission.total_seconds_late
                )
                if penalty is not None:
                    notebook.late_submission_penalty = min(max(penalty, 0), notebook.score)
        gb.db.commit()


def _late_plugin(course: Course):
    from nbgrader.plugins import LateSubmissionPlugin
    from nbgrader.preprocessors import AssignLatePenalties

    preprocessor = AssignLatePenalties(config=course.config)
    kind = preprocessor.plugin_class or LateSubmissionPlugin
    return kind(parent=preprocessor)


def grade_cells(sources: list[Path]) -> dict[str, dict[str, float]]:
    """notebook -> grade cell -> max points, from the source notebooks (as generate_assignment
    records them in the gradebook)."""
    out = {}
    for path in sources:
        cells = {}
        for cell in json.loads(Path(path).read_text())["cells"]:
            grading = cell.get("metadata", {}).get("nbgrader", {})
            if grading.get("grade"):
                cells[grading["grade_id"]] = float(grading.get("points", 0))
        out[Path(path).stem] = cells
    return out


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:  # lone surrogates
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def configured_timeout(root: Path) -> float | None:
    """nbgrader's per-cell timeout for this course (``ExecutePreprocessor.timeout``)."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    for section in ("Execute", "ExecutePreprocessor"):
        value = config.get(section, {}).get("timeout")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None
