"""``python -m autograde grade|feedback ASSIGNMENT``: the trusted grading command.

Run from the repository root. See ``autograde/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COURSE = Path(__file__).resolve().parent


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m autograde",
        description="Grade untrusted nbgrader submissions safely, and write their feedback.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    grade = commands.add_parser(
        "grade",
        help="grade submitted/*/ASSIGNMENT into the gradebook",
        description="Grade every submission of ASSIGNMENT (or --student ...) in a sandbox and "
        "write the scores into the nbgrader gradebook. Students already graded whose "
        "submission has not changed are skipped, so a killed run can simply be restarted.",
    )
    grade.add_argument("assignment")
    grade.add_argument(
        "--workers", type=int, default=None, help="submissions graded at once (default: CPUs)"
    )
    grade.add_argument("--student", action="append", default=[], help="grade only these")
    grade.add_argument("--force", action="store_true", help="regrade students already graded")
    grade.add_argument(
        "--timeout", type=float, default=None, help="seconds per cell (default: nbgrader's)"
    )
    grade.add_argument(
        "--notebook-timeout", type=float, default=None, help="seconds per notebook, all in"
    )
    grade.add_argument("--memory", type=int, default=4096, help="MiB per submission")
    grade.add_argument("--processes", type=int, default=64, help="processes per submission")
    grade.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run student code without bubblewrap (only for code you trust)",
    )
    grade.add_argument("--course", type=Path, default=COURSE, help=argparse.SUPPRESS)
    feedback = commands.add_parser(
        "feedback",
        help="write feedback/STUDENT/ASSIGNMENT/NOTEBOOK.html",
        description="Write one HTML page per graded student and notebook: each exercise's "
        "points and the checks' messages, without test code or tracebacks.",
    )
    feedback.add_argument("assignment")
    feedback.add_argument("--student", action="append", default=[])
    feedback.add_argument("--course", type=Path, default=COURSE, help=argparse.SUPPRESS)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = str(COURSE.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    if args.command == "feedback":
        from autograde.trusted import feedback

        written = feedback.generate(args.course, args.assignment, args.student or None)
        for path in written:
            print(f"wrote {path}")
        return 0
    from autograde.trusted import batch, course

    options = batch.Options(
        students=args.student,
        force=args.force,
        sandbox=not args.no_sandbox,
        memory_mb=args.memory,
        processes=args.processes,
    )
    if args.workers:
        options.workers = max(1, args.workers)
    configured = course.configured_timeout(args.course)
    options.timeout = args.timeout or configured or options.timeout
    options.notebook_timeout = args.notebook_timeout or max(
        options.notebook_timeout, 4 * options.timeout
    )
    return batch.grade(args.course, args.assignment, options)


if __name__ == "__main__":
    sys.exit(main())
