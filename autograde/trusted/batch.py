"""``python -m autograde grade``: grade every submission of an assignment.

1. Record the assignment in the gradebook with nbgrader's own ``generate_assignment`` (into a
   scratch folder: nothing in the course changes but the gradebook), and build the grading
   directory (``stubs``).
2. Skip each student whose result file is up to date (same submission, same assignment, same
   checks, same grader): a killed run resumes where it stopped, and grading twice changes
   nothing.
3. Hand the others to ``--workers`` judge processes (``judge``), each grading one student at
   a time in its own sandboxes.
4. As each student finishes, write the autograded notebooks, then the result file (atomically:
   it is the commit point), then the grades into the gradebook.

Each student's inputs are drawn from seeds mixed with a secret derived from a key kept in the
course's autograded folder, which the sandbox cannot read: the same for every run (so results
are reproducible and the order of grading, or the number of workers, does not matter), but not
predictable from the public course.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import queue
import secrets
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import course as course_mod
from . import sandbox, stubs, submission

GRADER_VERSION = "2"
RESULT_FILE = "trusted-result.json"
KEY_FILE = ".trusted-grading-key"
STATUS_ORDER = ("error", "invalid", "crashed", "timed out", "graded")
JUDGE_HEADROOM = 4 << 30  # bytes of address space a judge has beyond --memory (torch, checks)


@dataclass
class Options:
    workers: int = max(1, len(os.sched_getaffinity(0)))
    students: list[str] = field(default_factory=list)
    force: bool = False
    sandbox: bool = True
    timeout: float = 300.0  # seconds per cell
    notebook_timeout: float = 1200.0  # seconds per notebook, restarts included
    memory_mb: int = 4096
    processes: int = 64
    quiet: bool = False


def _log(options: Options, text: str) -> None:
    if not options.quiet:
        print(text, flush=True)


def package_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def course_lib_dir() -> Path:
    spec = importlib.util.find_spec("course_lib")
    if spec is None or not spec.origin:
        raise RuntimeError("course_lib is not importable: run from the repository root")
    return Path(spec.origin).parent


def secret_key(course: course_mod.Course) -> bytes:
    path = course.root / course.directory("autograded") / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def student_salt(key: bytes, assignment: str, student: str, submitted: str) -> int:
    """The secret mixed into every seed of this submission's checks: fresh inputs for each
    new submission (``submitted`` is its content's digest), the same for an unchanged one,
    so feedback on one attempt says nothing about the inputs of the next."""
    message = f"{assignment}/{student}/{submitted}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _tree_digest(h, folder: Path) -> None:
    if folder.is_dir():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" not in path.parts:
                h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())


def checks_digest(course: course_mod.Course) -> str:
    """What the verdicts depend on besides the submission: the checks and the grader."""
    h = hashlib.sha256(GRADER_VERSION.encode())
    _tree_digest(h, course_lib_dir())
    _tree_digest(h, course.root / "hidden_checks")
    _tree_digest(h, Path(__file__).parent)
    return h.hexdigest()


def fingerprint(assignment: str, found: submission.Submission, sources_digest: str, options):
    """What a student's result depends on: the submission, the assignment, checks, grader."""
    text = f"{sources_digest}\0{assignment}\0{found.student}\0{options.sandbox}"
    return hashlib.sha256(f"{text}\0{found.digest()}".encode()).hexdigest()


class Judge:
    """One judge process (one worker slot), under its own memory limit."""

    def __init__(self, slot: int, course_root: Path, log_dir: Path, memory: int):
        self.slot = slot
        self.log = open(log_dir / f"judge-{slot}.log", "ab")  # noqa: SIM115 - closed in stop()
        judge = [sys.executable, "-m", "autograde.trusted.judge", str(course_root), str(memory)]
        self.process = subprocess.Popen(
            judge,
            cwd=package_root(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.buffer = b""
        self.ready = False

    def wait_ready(self) -> None:
        line = self._read_line(time.monotonic() + 300)
        if not line or not json.loads(line).get("ready"):
            self.process.kill()
            raise RuntimeError(f"judge {self.slot} did not start; see {self.log.name}")
        self.ready = True

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def grade(self, job: dict, limit: float) -> dict:
        if not self.ready:
            self.wait_ready()
        job = {**job, "slot": self.slot}
        try:
            self.process.stdin.write(json.dumps(job).encode() + b"\n")
            self.process.stdin.flush()
            line = self._read_line(time.monotonic() + limit)
            if line is not None:
                return json.loads(line)
            reason = "the judge did not answer in time"
        except (OSError, ValueError) as error:
            reason = f"the judge process failed ({error})"
        self.process.kill()  # a new judge takes over with the next job
        self.process.wait()
        return _error_result(job, f"{reason}; see {self.log.name}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.log.closed:
            return
        if self.process.poll() is None:  # between jobs: nothing to lose, no need to wait
            self.process.kill()
            self.process.wait()
        self.log.close()


def _error_result(job: dict, reason: str) -> dict:
    return {
        "student": job["student"],
        "assignment": job["assignment"],
        "notebooks": {
            spec["name"]: {"status": "error", "reason": reason, "cells": [], "notebook": None}
            for spec in job["notebooks"]
        },
    }


class JudgePool:
    """``workers`` judge processes, started at once in the background (importing torch and
    the checks takes a while; the batch prepares the assignment meanwhile)."""

    def __init__(self, workers: int, course_root: Path, log_dir: Path, memory: int):
        self.course_root, self.log_dir, self.memory = course_root, log_dir, memory
        # Started from this thread: a judge dies with the thread that started it (PDEATHSIG).
        self.judges = [Judge(slot, course_root, log_dir, memory) for slot in range(workers)]
        self.starting = [
            threading.Thread(target=self._wait, args=(judge,), daemon=True) for judge in self.judges
        ]
        for thread in self.starting:
            thread.start()

    @staticmethod
    def _wait(judge: Judge) -> None:
        try:
            judge.wait_ready()
        except Exception:  # noqa: BLE001 - a new judge is started when the slot gets a job
            pass

    def judge(self, slot: int) -> Judge:
        judge = self.judges[slot]
        if not judge.alive():
            judge.stop()
            judge = Judge(slot, self.course_root, self.log_dir, self.memory)
            self.judges[slot] = judge
        return judge

    def run(self, jobs: list[dict], options: Options, on_result) -> None:
        """Grade ``jobs``; call ``on_result`` in this thread as each finishes."""
        for thread in self.starting:
            thread.join()
        todo: queue.Queue = queue.Queue()
        for job in jobs:
            todo.put(job)
        done: queue.Queue = queue.Queue()
        limit_per_job = options.notebook_timeout + 300

        def slot_loop(slot: int) -> None:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    limit = limit_per_job * max(1, len(job["notebooks"]))
                    result = self.judge(slot).grade(job, limit)
                except Exception as error:  # noqa: BLE001 - report it, keep the batch going
                    result = _error_result(job, f"{type(error).__name__}: {error}")
                done.put(result)

        threads = [
            threading.Thread(target=slot_loop, args=(slot,), daemon=True)
            for slot in range(min(len(self.starting), max(1, len(jobs))))
        ]
        for thread in threads:
            thread.start()
        for _ in jobs:
            on_result(done.get())
        for thread in threads:
            thread.join()

    def stop(self) -> None:
        for judge in self.judges:
            if not judge.ready:
                judge.process.kill()
        for judge in self.judges:
            judge.stop()
        for thread in self.starting:
            thread.join()


def worst(statuses) -> str:
    statuses = list(statuses)
    for status in STATUS_ORDER:
        if status in statuses:
            return status
    return "graded"


def finalize(course, assignment, result, found, fp, max_points, releases) -> dict:
    """Write one student's files and grades; the record that was written."""
    student = result["student"]
    folder = course.autograded(student, assignment)
    record = {
        "student": student,
        "assignment": assignment,
        "fingerprint": fp,
        "timestamp": found.timestamp,
        "grader": GRADER_VERSION,
        "graded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "notebooks": {},
    }
    for name, points in max_points.items():
        nb = result["notebooks"].get(name) or {
            "status": "invalid",
            "reason": f"no notebook {name}.ipynb",
            "cells": [],
            "notebook": None,
        }
        scores = course_mod.determine_scores(nb.get("notebook"), points)
        unchanged = course_mod.unchanged_solutions(nb.get("notebook"), releases.get(name))
        record["notebooks"][name] = {
            "status": nb["status"],
            "reason": nb.get("reason", ""),
            "events": nb.get("events", []),
            "sandbox_uids": nb.get("sandbox_uids", []),
            "seconds": nb.get("seconds"),
            "scores": scores,
            "max_points": points,
            "cells": nb.get("cells", []),
            "unchanged": sorted(unchanged),
        }
        if nb.get("notebook") is not None:
            course_mod.atomic_write(folder / f"{name}.ipynb", json.dumps(nb["notebook"], indent=1))
    record["status"] = worst(nb["status"] for nb in record["notebooks"].values())
    if record["status"] == "error":
        return record
    if found.timestamp:
        course_mod.atomic_write(folder / "timestamp.txt", found.timestamp)
    course_mod.atomic_write(folder / RESULT_FILE, json.dumps(record, indent=1))
    course_mod.write_grades(course, assignment, student, record)
    return record


def invalid_result(found: submission.Submission, assignment: str, sources) -> dict:
    """What the judge would answer for a submission none of which can be graded."""
    return {
        "student": found.student,
        "assignment": assignment,
        "notebooks": {
            s.stem: {"status": "invalid", "reason": found.invalid, "cells": [], "notebook": None}
            for s in sources
        },
    }


def isolated(student: str, step) -> tuple:
    """``step()``'s summary row, or an ``error`` row for this student alone if it fails (a
    gradebook or disk error, say): the batch goes on with the others."""
    try:
        return step()
    except Exception as error:  # noqa: BLE001 - reported; rerunning the command retries it
        return (student, "error", 0, 0, f"could not record the result: {error}")


def summary_row(record: dict, note: str = "") -> tuple:
    score = sum(sum(nb["scores"].values()) for nb in record["notebooks"].values())
    total = sum(sum(nb["max_points"].values()) for nb in record["notebooks"].values())
    reasons = [nb["reason"] for nb in record["notebooks"].values() if nb.get("reason")]
    return (record["student"], record["status"], score, total, note or "; ".join(reasons))


def print_summary(rows: list[tuple], options: Options) -> None:
    if options.quiet:
        return
    width = max([7] + [len(r[0]) for r in rows])
    print(f"\n{'student':<{width}}  {'status':<10}  {'score':>11}  notes")
    for student, status, score, total, note in rows:
        note = " ".join(note.split())
        note = note if len(note) <= 100 else note[:97] + "..."
        print(f"{student:<{width}}  {status:<10}  {score:>5g}/{total:<5g}  {note}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    print("\n" + ", ".join(f"{n} {status}" for status, n in counts.items()))


def grade(course_root: Path, assignment: str, options: Options) -> int:
    """The ``grade`` command; the exit status."""
    if options.sandbox:
        problem = sandbox.probe()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        for line in sandbox.protections().describe():
            _log(options, f"sandbox: {line}")
    else:
        _log(options, "warning: --no-sandbox: student code runs without isolation")
    started = time.monotonic()
    course = course_mod.Course.load(course_root)
    sources = course.source_notebooks(assignment)
    if not sources:
        print(f"error: no notebooks in source/{assignment}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="autograde-") as tmp:
        rows = _grade(course, assignment, options, sources, Path(tmp))
    rows.sort(key=lambda r: r[0])
    print_summary(rows, options)
    _log(options, f"done in {time.monotonic() - started:.1f} s")
    return 1 if any(r[1] == "error" for r in rows) else 0


class Background:
    """nbgrader's generate_assignment, run while the grading starts: importing nbgrader alone
    takes seconds, and the gradebook is only needed when the first result comes in."""

    def __init__(self, course, assignment: str, into: Path):
        self.release: Path | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(course, assignment, into))
        self.thread.start()

    def _run(self, course, assignment, into) -> None:
        try:
            self.release = course.generate_assignment(assignment, into)
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            self.error = error

    def wait(self) -> Path:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.release


def _parse_utc(text: str):
    from nbgrader.utils import parse_utc  # seconds to import: only when a timestamp is there

    return parse_utc(text)


def _grade(course, assignment, options, sources, tmp: Path) -> list[tuple]:
    background = Background(course, assignment, tmp / "nbgrader")
    release_paths = {s.stem: course.release_notebook(assignment, s.stem) for s in sources}
    if not all(release_paths.values()):  # not released yet: use generate_assignment's output
        scratch = background.wait()
        release_paths = {s.stem: scratch / s.name for s in sources}
    grading_dir = tmp / "grading"
    key = secret_key(course)
    common = checks_digest(course)
    names = [s.stem for s in sources]
    rows: list[tuple] = []
    skipped: list[tuple[str, dict]] = []
    jobs = []
    found_by: dict[str, tuple[submission.Submission, str]] = {}
    invalid: list[submission.Submission] = []
    copies = tmp / "submissions"  # what the judges read: never the student's folder itself
    sources_digest = hashlib.sha256(
        common.encode() + b"".join(hashlib.sha256(s.read_bytes()).digest() for s in sources)
    ).hexdigest()
    step_dir = course.root / course.directory("submitted")
    for index, student in enumerate(options.students or course.students(assignment)):
        try:  # whatever goes wrong reading one submission is that student's alone
            found = submission.read(step_dir, student, assignment, names, _parse_utc)
        except Exception as error:  # noqa: BLE001 - reported in the summary
            rows.append((submission.printable(student), "error", 0, 0, f"{error}"))
            continue
        if submission.student_id_problem(student):  # nowhere safe to write anything for it
            rows.append((submission.printable(student), "invalid", 0, 0, found.invalid))
            continue
        fp = fingerprint(assignment, found, sources_digest, options)
        found_by[student] = (found, fp)
        existing = course_mod.read_json(course.autograded(student, assignment) / RESULT_FILE)
        if not options.force and existing and existing.get("fingerprint") == fp:
            skipped.append((student, existing))
            continue
        if found.invalid:
            invalid.append(found)
            continue
        specs = []
        for s in sources:
            spec = {"name": s.stem, "source": str(s), "release": str(release_paths[s.stem])}
            if s.stem in found.notebooks:
                path = copies / str(index) / s.name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(found.notebooks[s.stem])
                spec["submitted"] = str(path)
            else:
                spec["problem"] = found.problems[s.stem]
            specs.append(spec)
        jobs.append(
            {
                "student": student,
                "assignment": assignment,
                "notebooks": specs,
                "salt": student_salt(key, assignment, student, found.digest()),
                "grading_dir": str(grading_dir),
                "sandbox": options.sandbox,
                "timeout": options.timeout,
                "notebook_timeout": options.notebook_timeout,
                "limits": {
                    "memory": options.memory_mb << 20,
                    "processes": options.processes,
                    "cpu_seconds": int(options.notebook_timeout) + 60,
                },
            }
        )
    # The judges import torch and the checks while the rest is prepared.
    judge_memory = (options.memory_mb << 20) + JUDGE_HEADROOM
    workers = min(options.workers, len(jobs))
    pool = JudgePool(workers, course.root, tmp, judge_memory) if jobs else None
    try:
        releases = {name: json.loads(path.read_text()) for name, path in release_paths.items()}
        max_points = course_mod.grade_cells(sources)
        if jobs:
            stubbed = stubs.build(
                grading_dir, course_lib_dir(), list(release_paths.values()), assignment
            )
            os.chmod(tmp, 0o755)
            threads = max(1, len(os.sched_getaffinity(0)) // len(pool.judges))
            for job in jobs:
                job["stubbed"], job["threads"] = sorted(stubbed), threads
        background.wait()
        for student, existing in skipped:
            rows.append(
                isolated(
                    student,
                    lambda existing=existing, student=student: (
                        course_mod.write_grades(course, assignment, student, existing),
                        summary_row(existing, "already graded (unchanged); skipped"),
                    )[1],
                )
            )
        if skipped:
            _log(options, f"{len(skipped)} submission(s) already graded and unchanged: skipped")

        def on_result(result: dict) -> None:
            student = result["student"]
            found, fp = found_by[student]
            rows.append(
                isolated(
                    student,
                    lambda: summary_row(
                        finalize(course, assignment, result, found, fp, max_points, releases)
                    ),
                )
            )

        for found in invalid:
            on_result(invalid_result(found, assignment, sources))
        if not jobs:
            return rows
        _log(
            options,
            f"grading {len(jobs)} submission(s) of {assignment} on {len(pool.judges)} worker(s)",
        )

        def on_graded(result: dict) -> None:
            on_result(result)
            row = rows[-1]
            done = len(rows) - len(skipped) - len(invalid)
            _log(options, f"[{done}/{len(jobs)}] {row[0]}: {row[1]}, {row[2]:g}/{row[3]:g}")

        pool.run(jobs, options, on_graded)
        return rows
    finally:
        if pool is not None:
            pool.stop()
        background.thread.join()
