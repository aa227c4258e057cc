"""``python -m autograde feedback``: one HTML page per student and notebook.

The page is built from the result file the ``grade`` command wrote, never from the notebook:
for each graded exercise, its name, the points earned out of the points possible, the checks
that passed and, for a failure, the check's message ("weights do not sum to 1 over the key
axis: ..."). Passes and failures come from the checks' structured verdicts
(``course_lib.checks.core.recording``), never from printed text, so nothing a student's object
prints can pass for a check. No test cell's code appears, so hidden tests stay hidden; no
traceback, so no line from inside a hidden check leaks either; and of an exception the
student's code raised only its type is shown, never its message, which could carry the
checks' secret inputs. The only text of the student's shown (an exception's type name) is
marked as theirs; everything is HTML-escaped, with encoding errors replaced.
"""

from __future__ import annotations

import html
from pathlib import Path

from . import course as course_mod
from . import submission
from .batch import RESULT_FILE

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #ddd; }
td.points { text-align: right; white-space: nowrap; }
.passed { color: #1a7f37; } .failed { color: #b42318; }
.exercise { border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; margin: 1rem 0; }
.message { background: #fff4f2; border-left: 3px solid #b42318; padding: .5rem .8rem;
           white-space: pre-wrap; }
.note { background: #f6f8fa; padding: .5rem .8rem; }
code.student { background: #f6f8fa; }
ul.checks { padding-left: 1.2rem; margin: .4rem 0; }
"""


def _e(text) -> str:
    text = str(text).encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates
    return html.escape(text, quote=True)


def _points(value: float) -> str:
    return f"{value:g}"


def exercise_html(cell: dict, score: float, points: float) -> str:
    passed = cell.get("error") is None and not cell.get("lost") and score >= points
    state = "passed" if passed else "failed"
    parts = [
        '<section class="exercise">',
        f"<h3>{_e(cell['grade_id'])} <span class='{state}'>"
        f"{_points(score)} / {_points(points)} points</span></h3>",
    ]
    verdicts = [v for v in cell.get("checks", []) if isinstance(v, dict)]
    shown = [
        f"✓ {v['title']}: {v['probe']}"
        for v in verdicts
        if v.get("passed") and (not v.get("hidden") or v.get("probe") == "hidden checks")
    ]
    if shown:
        parts.append('<ul class="checks">')
        parts += [f"<li>{_e(line)}</li>" for line in shown]
        parts.append("</ul>")
    if cell.get("invalid"):
        parts.append(
            f'<div class="message">Your notebook could not be graded: {_e(cell["invalid"])}.</div>'
        )
    elif cell.get("lost"):
        parts.append(
            f'<div class="message">Your code did not finish: {_e(cell["lost"])}. '
            "An infinite loop, a crash or too much memory costs this exercise's points.</div>"
        )
    elif cell.get("error"):
        failed = [v for v in verdicts if v.get("passed") is False]
        parts.append(f'<div class="message">{failure_html(cell["error"], failed)}</div>')
    elif not passed:
        parts.append(
            '<div class="message">The checks wrote to stderr (a warning?), which nbgrader '
            "counts as a failure.</div>"
        )
    if cell.get("origin") == "re-added":
        parts.append(
            '<p class="note">This test cell was missing from your notebook; the grader ran '
            "the original.</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def failure_html(error: dict, failed: list[dict]) -> str:
    """The check's own words for a failure; of the student's exception, only its type."""
    if failed:
        where = f"{failed[-1]['title']} — {failed[-1]['probe']}"
        if failed[-1].get("raised"):
            return _e(f"{where}: your code raised ") + _student(failed[-1]["raised"])
        return _e(f"{where}: {failed[-1].get('message', '')}")
    if error.get("by") == "check":
        return _e(error["evalue"])
    if error["ename"] == "NotImplementedError":
        return "NotImplementedError: the exercise still raises NotImplementedError (not done?)"
    return "Your code raised " + _student(error["ename"])


def _student(ename: str) -> str:
    return (
        f'<code class="student">{_e(ename)}</code> (an exception of your code; its message '
        "is not shown here)"
    )


def notebook_html(record: dict, name: str) -> str:
    nb = record["notebooks"][name]
    scores, max_points = nb["scores"], nb["max_points"]
    total, possible = sum(scores.values()), sum(max_points.values())
    title = f"{record['assignment']} / {name}: feedback for {record['student']}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Graded {_e(record.get('graded_at', ''))}. Status: <b>{_e(nb['status'])}</b>"
        + (f" ({_e(nb['reason'])})" if nb.get("reason") else "")
        + f". Score: <b>{_points(total)} / {_points(possible)}</b>.</p>",
        "<table><tr><th>Exercise</th><th>Points</th></tr>",
    ]
    for gid, points in max_points.items():
        body.append(
            f"<tr><td>{_e(gid)}</td><td class='points'>"
            f"{_points(scores.get(gid, 0))} / {_points(points)}</td></tr>"
        )
    body.append("</table>")
    cells = {c["grade_id"]: c for c in nb.get("cells", [])}
    for gid, points in max_points.items():
        cell = cells.get(gid, {"grade_id": gid, "error": None, "lost": None, "checks": []})
        if gid not in cells and nb["status"] in ("invalid", "error"):
            cell["invalid"] = nb.get("reason") or "the notebook could not be read"
        body.append(exercise_html(cell, scores.get(gid, 0), points))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def generate(course_root: Path, assignment: str, students: list[str] | None = None) -> list[Path]:
    """Write the feedback pages; the paths written."""
    course = course_mod.Course.load(course_root)
    written = []
    for student in students or course.students(assignment):
        problem = submission.student_id_problem(student)
        if problem:
            print(f"{submission.printable(student)}: skipped: {problem}")
            continue
        try:  # one student's broken result costs that student's pages alone
            record = course_mod.read_json(course.autograded(student, assignment) / RESULT_FILE)
            if record is None:
                print(f"{student}: not graded yet (run `python -m autograde grade {assignment}`)")
                continue
            for name in record["notebooks"]:
                path = course.feedback(student, assignment) / f"{name}.html"
                course_mod.atomic_write(path, notebook_html(record, name))
                written.append(path)
        except Exception as error:  # noqa: BLE001 - reported, the others go on
            print(f"{student}: no feedback written ({type(error).__name__}: {error})")
    return written
