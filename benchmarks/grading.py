"""Trusted grading against plain nbgrader: seconds per submission, and identical scores.

Run: .venv/bin/python -m benchmarks.grading [--k 24] [--chapters NAME ...] [--workers N]

For each chapter it builds K synthetic honest submissions (a third the reference solution, a
third partly done, a third the blank release) in two scratch copies of the course, grades one
with plain ``nbgrader autograde`` and the other with ``python -m autograde grade`` (sandbox on,
default workers: one per CPU), checks that every student gets the same score for every test
cell in both gradebooks, and prints seconds per submission for each and their ratio.

Both graders run in this same command, one after the other, on the same machine: compare the
ratio, not the absolute times, across machines. The last lines break the cost of one
submission down: what a Jupyter kernel costs nbgrader before the first cell (start-up and
``import torch``), and what a sandboxed worker costs this grader before the first cell.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autograde.trusted import synthetic
from tools.chapters import ROOT, load_all
from tools.sync import venv_env

AUTOGRADE = ROOT / "autograde"


def submissions(name: str, k: int) -> dict[str, dict]:
    source = synthetic.load(AUTOGRADE / "source" / name / f"{name}.ipynb")
    release = synthetic.load(AUTOGRADE / "release" / name / f"{name}.ipynb")
    n = len(synthetic.exercises(release))
    subs = {}
    for i in range(k):
        if i % 3 == 0:
            nb = synthetic.reference(source, release)
        elif i % 3 == 1:  # a different half of the exercises done each time
            nb = synthetic.partly(source, release, {j for j in range(n) if (i + j) % 2})
        else:
            nb = synthetic.blank(release)
        subs[f"student-{i:03d}"] = nb
    return subs


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds


def gradebook(course: Path, name: str) -> dict[tuple[str, str], float]:
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course}/gradebook.db", "attention-course") as gb:
        for submission in gb.find_assignment(name).submissions:
            for nb in submission.notebooks:
                for grade in nb.grades:
                    out[(submission.student.id, grade.name)] = grade.auto_score
    return out


def kernel_startup() -> float:
    """A Jupyter kernel that starts and imports torch: nbgrader's cost before any cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import torch")])
    saved = os.dup(2)  # the kernel's start-up warnings would clutter the table
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        start = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3").execute()
        return time.perf_counter() - start
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def worker_startup(grading_dir: Path, sandboxed: bool = True) -> float:
    """A worker ready to run cells (Python, torch, IPython; and bwrap if ``sandboxed``)."""
    from autograde.trusted.remote import Session
    from autograde.trusted.sandbox import SandboxConfig, WorkerProcess

    start = time.perf_counter()
    process = WorkerProcess(SandboxConfig(grading_dir, sandbox=sandboxed))
    session = Session(process, frozenset(), 1)
    session.deadline = time.monotonic() + 300
    session.wait_ready()
    seconds = time.perf_counter() - start
    session.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=24, help="submissions per chapter (>= 3)")
    parser.add_argument("--chapters", nargs="*", default=[ch.name for ch in load_all()])
    parser.add_argument("--workers", type=int, default=None, help="for the trusted grader")
    args = parser.parse_args()
    workers = ["--workers", str(args.workers)] if args.workers else []
    print(f"{os.cpu_count()} CPUs; K = {args.k} submissions per chapter\n")
    header = (
        f"{'seconds per submission':32s} {'nbgrader':>10s} {'trusted':>10s} {'ratio':>6s}  scores"
    )
    print(header + "\n" + "-" * len(header))
    totals = [0.0, 0.0, 0]
    with tempfile.TemporaryDirectory(prefix="grading-benchmark-") as tmp:
        for name in args.chapters:
            plain = synthetic.scratch_course(Path(tmp) / name / "plain", [name])
            trusted = synthetic.scratch_course(Path(tmp) / name / "trusted", [name])
            for student, nb in submissions(name, args.k).items():
                for course in (plain, trusted):
                    synthetic.submit(nb, course, student, name, name)
            nbgrader = [sys.executable, "-m", "nbgrader"]
            run([*nbgrader, "generate_assignment", name, "--force"], plain)
            plain_s = run([*nbgrader, "autograde", name, "--create", "--force"], plain)
            ours = [sys.executable, "-m", "autograde", "grade", name, "--course", str(trusted)]
            trusted_s = run([*ours, *workers], ROOT)
            same = gradebook(plain, name) == gradebook(trusted, name)
            for i, value in enumerate((plain_s, trusted_s, args.k)):
                totals[i] += value
            k = args.k
            print(
                f"{name:32s} {plain_s / k:8.2f} s {trusted_s / k:8.2f} s "
                f"{plain_s / trusted_s:5.2f}x  {'identical' if same else 'DIFFERENT'}",
                flush=True,
            )
            if not same:
                raise SystemExit(f"scores differ for {name}")
        print("-" * len(header))
        n = totals[2]
        print(
            f"{'all chapters':32s} {totals[0] / n:8.2f} s {totals[1] / n:8.2f} s "
            f"{totals[0] / totals[1]:5.2f}x"
        )
        from autograde.trusted import stubs

        grading_dir = Path(tmp) / "grading"
        name = args.chapters[0]
        stubs.build(grading_dir, ROOT / "course_lib", [], name)
        os.chmod(tmp, 0o755)
        kernel = min(kernel_startup() for _ in range(3))
        worker = min(worker_startup(grading_dir) for _ in range(3))
        bare = min(worker_startup(grading_dir, sandboxed=False) for _ in range(3))
    print(
        "\nper notebook, before its first cell (best of 3):\n"
        f"  nbgrader: Jupyter kernel start + import torch            {kernel:5.2f} s\n"
        f"  trusted:  bwrap + Python + import torch + IPython shell  {worker:5.2f} s\n"
        f"            the same without the sandbox                   {bare:5.2f} s"
    )


if __name__ == "__main__":
    main()
