"""The judge: grades one submission, deciding every verdict outside the student's process.

For each notebook it starts a sandboxed worker and walks the cells in order
(``notebooks.plan``): the student's cells run in the worker; each test cell runs *here*, from
the source notebook (hidden tests included), with the names it uses bound to proxies of the
student's objects (``remote``). The checks are this process's own, untouched modules: they
generate the inputs (from seeds mixed with a per-student secret), call the student's code
through the proxies, and compare what comes back with their oracles.

If the worker dies or runs out of time, the cell that was running fails, a fresh worker
replays the cells that had completed, and grading goes on with the next cell: an infinite
loop or a crash costs the points of the exercise it happens in, not the rest.

A judge is a long-lived process (``python -m autograde.trusted.judge``) that reads jobs as
JSON lines on stdin and answers each with a JSON line on stdout; the batch runs one per
``--workers`` slot. It imports torch and the checks once; it never runs student code.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import io
import json
import os
import random
import sys
import time
import traceback
import warnings
from pathlib import Path

SAFE_MODULES = frozenset(
    "torch numpy math cmath random collections itertools functools operator statistics "
    "string re typing dataclasses fractions decimal".split()
)
HIDDEN_NOTE = "# (hidden tests ran here; their code is in the source notebook)\n"
OUTPUT_LIMIT = 20_000  # characters of a cell's output kept in the autograded notebook
MAX_VERDICTS = 500  # probes' verdicts kept per test cell
_SALT: list[int | None] = [None]


def install_hooks() -> None:
    """Mix the per-student secret into every seed the checks draw inputs from.

    Checks create their random inputs with ``course_lib.checks.core.generator(seed)``; here
    that function mixes the seed with a secret that only the grader knows, so the inputs of
    the visible and hidden checks cannot be known in advance (the course, hidden checks
    included, is public). With no secret set it is the original function.
    """
    from course_lib.checks import core

    original = getattr(core.generator, "__wrapped__", core.generator)

    def generator(seed: int):
        salt = _SALT[0]
        if salt is None:
            return original(seed)
        digest = hashlib.blake2b(f"{salt}:{seed}".encode(), digest_size=8).digest()
        return original(int.from_bytes(digest, "big") >> 1)

    generator.__wrapped__ = original
    core.generator = generator
    for module in list(sys.modules.values()):
        if getattr(module, "generator", None) is original:
            module.generator = generator


class TaggedStream(io.TextIOBase):
    """A cell's output: text printed here ("judge") and text the worker sent ("worker")."""

    def __init__(self):
        self.parts: list[tuple[str, str]] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def _add(self, tag: str, text: str) -> int:
        if self.size < OUTPUT_LIMIT * 5:
            self.parts.append((tag, text))
            self.size += len(text)
        return len(text)

    def write(self, text) -> int:
        return self._add("judge", str(text))

    def write_worker(self, text: str) -> int:
        return self._add("worker", text)

    def text(self, tag: str | None = None) -> str:
        joined = "".join(t for k, t in self.parts if tag is None or k == tag)
        if len(joined) > OUTPUT_LIMIT:
            joined = joined[:OUTPUT_LIMIT] + "\n[output truncated by the grader]\n"
        return joined


class Runner:
    """The worker for one notebook, restarted (and the completed cells replayed) as needed."""

    def __init__(self, job: dict):
        from .sandbox import Limits, SandboxConfig

        limits = Limits(**job["limits"])
        self.config = SandboxConfig(Path(job["grading_dir"]), limits, job["sandbox"])
        self.config.threads = int(job.get("threads", 1))
        self.uids: list[int] = []  # one per sandbox started: none is ever reused
        self.stubbed = frozenset(tuple(p) for p in job["stubbed"])
        self.timeout = float(job["timeout"])
        self.deadline = time.monotonic() + float(job["notebook_timeout"])
        self.max_restarts = int(job.get("max_restarts", 3))
        self.session = None
        self.generation = 0
        self.history: list[str] = []
        self.events: list[dict] = []
        self.broken: str | None = None

    def cell_deadline(self) -> float:
        return min(time.monotonic() + self.timeout, self.deadline)

    def ensure(self):
        """A live session, starting (or restarting and replaying) the worker if needed."""
        from .remote import Session, WorkerLost
        from .sandbox import WorkerProcess

        if self.session is not None and self.session.lost is None:
            return self.session
        if self.broken:
            raise WorkerLost(self.broken)
        if time.monotonic() >= self.deadline:
            self.broken = "the notebook used up its time budget"
            raise WorkerLost(self.broken, timed_out=True)
        if self.generation > self.max_restarts:
            self.broken = f"the worker was restarted {self.max_restarts} times; giving up"
            raise WorkerLost(self.broken)
        if self.session is not None:
            self.session.close()
        self.generation += 1
        process = WorkerProcess(self.config)
        self.uids.append(process.uid)
        session = Session(process, self.stubbed, self.generation)
        session.deadline = min(time.monotonic() + max(120.0, self.timeout), self.deadline)
        try:
            session.wait_ready()
            for source in self.history:  # replay what had completed before the restart
                session.deadline = self.cell_deadline()
                with (
                    contextlib.redirect_stdout(TaggedStream()),
                    contextlib.redirect_stderr(TaggedStream()),
                ):
                    try:
                        session.exec_cell(source)
                    except WorkerLost:
                        raise
                    except BaseException:  # noqa: BLE001, S110 - the student's worker misbehaved
                        pass
        except WorkerLost as lost:
            self.broken = f"the worker could not be restarted: {lost.reason}"
            session.close()
            raise WorkerLost(self.broken) from None
        self.session = session
        return session

    def lost(self, index: int, step, lost) -> None:
        kind = "timeout" if lost.timed_out else "crash"
        self.events.append(
            {"cell": index, "grade_id": step.grade_id, "kind": kind, "reason": lost.reason}
        )

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _stream(name: str, text: str) -> list[dict]:
    return [{"output_type": "stream", "name": name, "text": text}] if text else []


def _error_output(ename: str, evalue: str) -> dict:
    return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": []}


def run_student_cell(runner: Runner, index: int, step) -> list[dict]:
    from .remote import WorkerLost

    out, err = TaggedStream(), TaggedStream()
    outputs: list[dict] = []
    try:
        session = runner.ensure()
        session.deadline = runner.cell_deadline()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                error = session.exec_cell(step.source)
            except WorkerLost:
                raise
            except BaseException as failure:  # noqa: BLE001 - the worker broke its machinery
                error = {"type": type(failure).__name__, "message": str(failure)}
        runner.history.append(step.source)
    except WorkerLost as lost:
        if runner.session is not None and runner.session.lost is lost:
            runner.lost(index, step, lost)
        error = {"type": "CellTimeoutError" if lost.timed_out else "WorkerDied"}
        error["message"] = lost.reason
    outputs += _stream("stdout", out.text()) + _stream("stderr", err.text())
    if error:
        ename = str(error.get("type", "Error"))[:200]
        outputs.append(_error_output(ename, str(error.get("message", ""))[:OUTPUT_LIMIT]))
    return outputs


def _names(tree: ast.AST) -> list[str]:
    return sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})


def _assigned(tree: ast.AST) -> set[str]:
    """The names a cell binds at its top level (imports, assignments, definitions)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _judge_value(value):
    """What a name of the student's becomes in a test cell run here.

    A module the student's cell imported becomes the judge's own module of that name only if
    the judge already holds it: nothing is imported (or run) because the worker said so.
    """
    from . import wire

    if isinstance(value, wire.ModuleRef):
        held = sys.modules.get(value.name)
        if held is not None and value.name.split(".")[0] in SAFE_MODULES:
            return held
        return value.handle
    return value


def run_test_cell(runner: Runner, index: int, step, carry: dict) -> dict:
    """Run one test cell here; its outputs (as nbgrader would record them) and details."""
    import torch

    from course_lib.checks import core

    from .remote import RemoteObject, WorkerLost

    out, err = TaggedStream(), TaggedStream()
    result: dict = {"grade_id": step.grade_id, "origin": step.origin, "lost": None}
    verdicts: list[dict] = []
    error = None
    display = None
    try:
        tree = ast.parse(step.source)
    except SyntaxError as bad:
        tree, error = None, bad
    session = None
    if tree is not None:
        try:
            session = runner.ensure()
            session.deadline = runner.cell_deadline()
            state = session.rng_state()
            if isinstance(state, torch.Tensor) and state.shape == torch.get_rng_state().shape:
                torch.set_rng_state(state)
            resolved = session.resolve(_names(tree))
        except BaseException as failure:  # noqa: BLE001 - the student's worker misbehaved
            error = failure
            resolved = {}
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        for name in _names(tree):
            if name in carry:  # bound by an earlier test cell: ours, whatever the student did
                namespace[name] = carry[name]
            elif name in resolved:
                value = _judge_value(resolved[name])
                if value is not None or resolved[name] is None:
                    namespace[name] = value
        if error is None:
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                warnings.catch_warnings(),
                core.recording() as verdicts,
            ):
                try:
                    exec(compile(tree, f"<test cell {step.grade_id}>", "exec"), namespace)
                    if last is not None:
                        value = eval(
                            compile(last, f"<test cell {step.grade_id}>", "eval"), namespace
                        )
                        if value is not None and not step.source.rstrip().endswith(";"):
                            display = _display(value)
                except BaseException as failure:  # noqa: BLE001 - any failure fails the cell
                    error = failure
        for name in _assigned(tree):  # what this cell defined, for the next test cells
            value = namespace.get(name)
            if name in namespace and not isinstance(value, RemoteObject):
                carry[name] = value
    if session is not None and session.lost is not None:
        error = session.lost
    if isinstance(error, WorkerLost):
        result["lost"] = error.reason
        if session is not None and session.lost is error:
            runner.lost(index, step, error)
    elif session is not None:
        try:  # the kernel's RNG goes on from where the test cell left it
            session.deadline = runner.cell_deadline()
            session.set_rng_state(torch.get_rng_state())
            session.release()
        except WorkerLost as lost:
            runner.lost(index, step, lost)
        except Exception:  # noqa: BLE001, S110 - only the student's own process is affected
            pass
    outputs = _stream("stdout", out.text()) + _stream("stderr", err.text())
    if display is not None:
        outputs.append(
            {
                "output_type": "execute_result",
                "data": {"text/plain": display},
                "metadata": {},
                "execution_count": None,
            }
        )
    if error is not None:
        ename, evalue = _describe(error)
        outputs.append(_error_output(ename, evalue))
        result["error"] = {"ename": ename, "evalue": evalue, "by": _raised_by(error, core)}
    result["checks"] = verdicts[:MAX_VERDICTS]
    result["outputs"] = outputs
    return result


def _raised_by(error: BaseException, core) -> str:
    """Whose failure it is: "check" (a CheckFailed of the judge's own checks: its message
    is the check's), "grader" (the worker was lost) or "student" (anything else reached the
    test cell: the student's code, whose message is the student's)."""
    from .remote import RemoteError, WorkerLost

    if isinstance(error, WorkerLost):
        return "grader"
    if isinstance(error, core.CheckFailed) and not isinstance(error, RemoteError):
        return "check"
    return "student"


def _describe(error: BaseException) -> tuple[str, str]:
    from .remote import WorkerLost

    if isinstance(error, WorkerLost):
        name = "CellTimeoutError" if error.timed_out else "WorkerDied"
        return name, error.reason
    return type(error).__name__[:200], str(error)[:OUTPUT_LIMIT]


def _display(value) -> str:
    from .remote import RemoteObject

    if isinstance(value, RemoteObject):
        return "<an object of the student's>"
    try:
        return repr(value)[:OUTPUT_LIMIT]
    except Exception:  # noqa: BLE001
        return "<unprintable>"


def grade_notebook(job: dict, spec: dict) -> dict:
    """Grade one notebook of one submission (see the module docstring)."""
    from . import notebooks

    source_nb = notebooks.read(Path(spec["source"]))
    release_nb = notebooks.read(Path(spec["release"])) if spec.get("release") else None
    sources = notebooks.source_cells(source_nb, release_nb)
    if spec.get("problem"):  # the batch could not read it (a link, too large, ...)
        return {"status": "invalid", "reason": spec["problem"], "cells": [], "notebook": None}
    try:
        submitted = notebooks.read(Path(spec["submitted"]))
    except notebooks.InvalidNotebook as invalid:
        return {"status": "invalid", "reason": str(invalid), "cells": [], "notebook": None}
    steps = notebooks.plan(sources, submitted)
    started = time.monotonic()
    runner = Runner(job)
    carry: dict = {}
    cells: list[dict] = []
    ids: set[str] = set()
    tests: list[dict] = []
    _SALT[0] = job.get("salt")
    random.seed(job.get("salt"))
    try:
        for index, step in enumerate(steps):
            source = step.source
            if step.kind == "test" and notebooks.BEGIN_HIDDEN in source:
                # nbgrader's own generate_feedback shows test cells: keep hidden tests out
                source = notebooks.strip_hidden(source).rstrip("\n") + "\n" + HIDDEN_NOTE
            cell = {"cell_type": step.cell_type, "metadata": step.metadata, "source": source}
            if step.cell_type == "code":
                cell.update(execution_count=None, outputs=[])
                if step.kind == "test":
                    outcome = run_test_cell(runner, index, step, carry)
                    cell["outputs"] = outcome.pop("outputs")
                    tests.append(outcome)
                elif step.kind in ("student", "given"):
                    cell["outputs"] = run_student_cell(runner, index, step)
            cell["id"] = _cell_id(step, index, ids)
            ids.add(cell["id"])
            cells.append(cell)
    finally:
        runner.close()
        _SALT[0] = None
    status, reason = "graded", ""
    for event in runner.events:
        status = "timed out" if event["kind"] == "timeout" else "crashed"
        reason = event["reason"]
        break
    if runner.broken and status == "graded":
        status, reason = "crashed", runner.broken
    autograded = {
        "cells": cells,
        "metadata": source_nb.get("metadata") or {},  # as nbgrader's OverwriteKernelspec
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return {
        "status": status,
        "reason": reason,
        "sandbox_uids": runner.uids,
        "seconds": round(time.monotonic() - started, 2),
        "events": runner.events,
        "cells": tests,
        "notebook": autograded,
    }


def _cell_id(step, index: int, taken: set[str]) -> str:
    wanted = step.grade_id or f"cell-{index:03d}"
    return wanted if wanted not in taken else f"{wanted}-{index:03d}"


def grade(job: dict) -> dict:
    results = {}
    for spec in job["notebooks"]:
        try:
            results[spec["name"]] = grade_notebook(job, spec)
        except BaseException:  # noqa: BLE001 - a grader bug must not take the batch down
            results[spec["name"]] = {
                "status": "error",
                "reason": "the grader failed: " + traceback.format_exc()[-2000:],
                "cells": [],
                "notebook": None,
            }
    return {"student": job["student"], "assignment": job["assignment"], "notebooks": results}


def _die_with_parent() -> None:
    """Exit when the batch that started this judge dies (its sandboxes follow, by bwrap's
    --die-with-parent), so a killed run leaves nothing behind."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def _limit_memory(limit: int) -> None:
    """The judge's own address-space limit: whatever a worker sends, the judge can grow only
    so far (a MemoryError then fails the cell being graded, as any other failure does)."""
    import resource

    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    _die_with_parent()
    _limit_memory(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    os.environ["NBGRADER_EXECUTION"] = "autograde"  # as in nbgrader's kernels
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the sandbox has no GPU: neither do the checks
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing but answers goes to the batch on fd 1
    course = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for path in (str(Path.cwd()), str(course)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import torch

    torch.set_num_threads(1)
    install_hooks()
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        protocol.write(json.dumps(grade(job)) + "\n")


if __name__ == "__main__":
    main()
