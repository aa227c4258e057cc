"""The trusted grading command (``python -m autograde``): every guarantee of issue 4 is shown
by a fixture submission, built here from the chapter's source and release notebooks.

The hostile fixtures sit in one batch, graded on two workers next to honest submissions:
tampering, snooping, delegating to course_lib, infinite loops, memory and fork bombs, exits,
protocol garbage, deleted and edited test cells, broken and missing notebooks. Each must cost
that submission at most its own points, with the right status, and change nothing for the
others. Honest submissions must score exactly what plain ``nbgrader autograde`` gives them.

These tests need bubblewrap (``.ci/run`` installs it). Where it cannot create namespaces,
they fail and say why, rather than pass without a sandbox.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autograde.trusted import batch, notebooks, sandbox, stubs, synthetic, wire
from autograde.trusted import feedback as feedback_mod
from tools.chapters import ROOT, load_all
from tools.sync import venv_env

AUTOGRADE = ROOT / "autograde"
CH1 = "01-queries-keys-values"
CHAPTERS = [ch.name for ch in load_all()]
# The per-cell limit must leave an honest cell (the first imports torch in a fresh sandbox)
# room on a loaded 2-core machine: at 6 s an honest submission timed out in CI.
FAST_LIMITS = ["--timeout", "15", "--notebook-timeout", "120", "--memory", "1536"]


# ------------------------------------------------------------------------------ helpers


def make_course(tmp: Path, chapters: list[str]) -> Path:
    return synthetic.scratch_course(tmp / "course", chapters)


def notebooks_of(name: str) -> tuple[dict, dict]:
    source = synthetic.load(AUTOGRADE / "source" / name / f"{name}.ipynb")
    release = synthetic.load(AUTOGRADE / "release" / name / f"{name}.ipynb")
    return source, release


def grade(course: Path, assignment: str, *args: str, timeout: int = 600):
    cmd = [sys.executable, "-m", "autograde", "grade", assignment, "--course", str(course)]
    return subprocess.run(
        [*cmd, *args], cwd=ROOT, env=venv_env(), capture_output=True, text=True, timeout=timeout
    )


def results(course: Path, assignment: str) -> dict[str, dict]:
    """student -> the result file the command wrote."""
    out = {}
    for path in (course / "autograded").glob(f"*/{assignment}/{batch.RESULT_FILE}"):
        out[path.parent.parent.name] = json.loads(path.read_text())
    return out


def scores(record: dict, name: str) -> dict[str, float]:
    return record["notebooks"][name]["scores"]


def nbgrader(course: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def gradebook_scores(course: Path, assignment: str) -> dict[str, dict[str, float]]:
    """student -> grade cell -> auto score, read back from the nbgrader gradebook."""
    from nbgrader.api import Gradebook

    out: dict[str, dict[str, float]] = {}
    with Gradebook(f"sqlite:///{course}/gradebook.db", "attention-course") as gb:
        for submission in gb.find_assignment(assignment).submissions:
            for nb in submission.notebooks:
                for g in nb.grades:
                    out.setdefault(submission.student.id, {})[g.name] = g.auto_score
    return out


def export(course: Path) -> list[dict]:
    nbgrader(course, "export", "--to", str(course / "grades.csv"))
    with open(course / "grades.csv") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["student_id"])


@pytest.fixture(scope="session")
def bwrap_works():
    problem = sandbox.probe()
    if problem:
        pytest.fail(
            f"The trusted grader's sandbox is unavailable on this machine: {problem}",
            pytrace=False,
        )


# ------------------------------------------------------------------ honest submissions

WRONG_SOFTMAX = """
def softmax(scores, dim=-1):
    e = (scores - scores.max()).exp()
    return e / e.sum(dim=0, keepdim=True)
"""
WARNING_SOFTMAX = """
import warnings

def softmax(scores, dim=-1):
    warnings.warn("a warning in the student's code")
    return torch.softmax(scores, dim)
"""


def honest(name: str) -> dict[str, dict]:
    """Honest submissions for any chapter: the blank release and two complementary partial
    ones (between them, every exercise is once the reference and once a stub)."""
    source, release = notebooks_of(name)
    n = len(synthetic.exercises(release))
    return {
        "honest-blank": synthetic.blank(release),
        "honest-even": synthetic.partly(source, release, set(range(0, n, 2))),
        "honest-odd": synthetic.partly(source, release, set(range(1, n, 2))),
    }


def honest_ch1() -> dict[str, dict]:
    """Chapter 1's reference, a known bug, and a warning on stderr (which nbgrader counts as
    a failure of the test cell, so this grader must too)."""
    source, release = notebooks_of(CH1)
    reference = synthetic.reference(source, release)
    return {
        "honest-reference": reference,
        "honest-buggy": synthetic.with_code(reference, {"softmax": WRONG_SOFTMAX}),
        "honest-warning": synthetic.with_code(reference, {"softmax": WARNING_SOFTMAX}),
    }


# ----------------------------------------------------------------- hostile submissions

WRONG = {
    "dot_scores": (
        "def dot_scores(query, keys):\n    return torch.zeros(query.shape[0], keys.shape[0])\n"
    ),
    "softmax": "def softmax(scores, dim=-1):\n    return torch.zeros_like(scores)\n",
    "soft_lookup": (
        "def soft_lookup(query, keys, values):\n"
        "    return torch.zeros(query.shape[0], values.shape[1]), "
        "torch.zeros(query.shape[0], keys.shape[0])\n"
    ),
}
PATCH_TORCH = """
import numpy, torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isfinite = lambda t: torch.ones_like(t, dtype=torch.bool)
torch.Tensor.__eq__ = lambda *a, **k: True
numpy.allclose = lambda *a, **k: True
print("patched:", torch.allclose(torch.zeros(1), torch.ones(1)))
"""
PATCH_BUILTINS = """
import builtins
builtins.isinstance = lambda *a, **k: True
builtins.len = lambda *a: 0
"""
PATCH_CHECKS = """
import sys, types
import course_lib.checks.core as core
import course_lib.checks.attention as visible
core.expect_close = core.expect = core.expect_unchanged = lambda *a, **k: None
core.run = lambda title, probes: print(f"All checks passed for {title}.")
core.CheckFailed = type("CheckFailed", (Exception,), {})
for name in ("check_dot_scores", "check_softmax", "check_soft_lookup"):
    setattr(visible, name, lambda *a, **k: None)
fake = types.ModuleType("hidden_checks")
fake.__path__ = []
fake.attention = types.ModuleType("hidden_checks.attention")
for name in ("hidden_check_dot_scores", "hidden_check_softmax", "hidden_check_soft_lookup"):
    setattr(fake.attention, name, lambda *a, **k: None)
sys.modules["hidden_checks"], sys.modules["hidden_checks.attention"] = fake, fake.attention
checks = types.SimpleNamespace(check_softmax=lambda *a: None)  # names the test cells use
hidden_check_softmax = hidden_check_dot_scores = lambda *a: None
"""
DELEGATE = {
    "dot_scores": (
        "def dot_scores(query, keys):\n"
        "    from course_lib.attention import dot_scores as reference\n"
        "    return reference(query, keys)\n"
    ),
    "softmax": (
        "import importlib, inspect\n"
        "import course_lib.attention as lib\n"
        "namespace = {}\n"
        "exec(inspect.getsource(importlib.reload(lib)), namespace)  # the module's own source\n"
        "def softmax(scores, dim=-1):\n"
        "    return namespace['softmax'](scores, dim)\n"
    ),
    "soft_lookup": (
        "def soft_lookup(query, keys, values):\n"
        "    import course_lib.attention\n"
        "    return course_lib.attention.soft_lookup(query, keys, values)\n"
    ),
}
SNOOP = """
import os, socket
def attempt(what, action):
    try:
        action()
        print(f"LEAK: {what}")
    except Exception as error:
        print(f"blocked: {what} ({type(error).__name__})")
for path in PATHS:
    attempt(f"read {path}", lambda: open(path, "rb").read(1))
attempt("write into the course", lambda: open(COURSE + "/pwned.txt", "w").write("x"))
attempt("write into course_lib", lambda: open("/grader/course_lib/pwned.py", "w").write("x"))
attempt("list the repository", lambda: "solutions" in os.listdir(REPO) or 1 / 0)
attempt("connect to the host", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
attempt("resolve a name", lambda: socket.getaddrinfo("example.com", 80))
os.kill(-1, 9)  # every process this user may signal: in the sandbox, none but its own
"""
LOOP_IGNORING_SIGINT = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    pass
"""
# The hostile exercises misbehave only on the hidden checks' inputs (a 3-D softmax, L = 7
# queries), so that the chapter's demo cells, which call them too, do not add more incidents.
LOOPING_SOFTMAX = """
def softmax(scores, dim=-1):
    if scores.dim() == 3:
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            pass
    return torch.softmax(scores, dim)
"""
MEMORY_SOFTMAX = """
def softmax(scores, dim=-1):
    hog = torch.ones(2**40)  # 4 TiB
    return torch.softmax(scores, dim)
"""
FORKED_MEMORY = """
import os, time
for _ in range(6):
    if os.fork() == 0:
        hog = bytearray(600 * 2**20)  # each child stays under its own limit; together, not
        time.sleep(120)
time.sleep(60)
"""
FORK_BOMB = """
import os
while True:
    os.fork()
"""
EXIT_IN_DOT_SCORES = """
def dot_scores(query, keys):
    if query.shape[0] == 7:
        import os
        os._exit(1)
    return query @ keys.T
"""
GARBAGE_SOFTMAX = """
def softmax(scores, dim=-1):
    if scores.dim() == 3:
        import os, sys
        fd = int(sys.argv[sys.argv.index("--reply-fd") + 1])
        os.write(fd, (12).to_bytes(8, "big") + b"not a reply!")
    return torch.softmax(scores, dim)
"""


BREAK_WORKER = """
import _grader.worker as machinery  # the sandbox's side of the grader: the student's to break
machinery.Worker.resolve = lambda self, names, blobs: 1 / 0
"""


def hardcoded_softmax() -> str:
    """A softmax right only on the inputs the public checks draw (seeds from the public repo):
    it earns full marks from checks that use those seeds, nothing with the secret seeds."""
    sys.path.insert(0, str(AUTOGRADE))
    from hidden_checks import attention as hidden

    from course_lib.checks import attention as visible

    seen: list[list] = []

    def recorder(scores, dim=-1):
        seen.append([scores.dtype == torch.float64, dim, scores.tolist()])
        return torch.softmax(scores, dim)

    visible.check_softmax(recorder)
    hidden.hidden_check_softmax(recorder)
    return (
        f"KNOWN = {seen!r}\n"
        "def softmax(scores, dim=-1):\n"
        "    for f64, d, values in KNOWN:\n"
        "        if d == dim and (scores.dtype == torch.float64) == f64 "
        "and scores.tolist() == values:\n"
        "            return torch.softmax(scores, dim)\n"
        "    return torch.zeros_like(scores)\n"
    )


def hostile(course: Path, port: int) -> dict[str, object]:
    source, release = notebooks_of(CH1)
    reference = synthetic.reference(source, release)
    paths = [
        ROOT / "solutions" / f"{CH1}.md",
        AUTOGRADE / "source" / CH1 / f"{CH1}.ipynb",
        AUTOGRADE / "hidden_checks" / "attention.py",
        ROOT / "course_lib" / "attention.py",
        course / "source" / CH1 / f"{CH1}.ipynb",
        course / "hidden_checks" / "attention.py",
        course / "gradebook.db",
        course / "autograded" / batch.KEY_FILE,
        Path("/etc/shadow"),
        Path("/root/.bash_history"),
    ]
    snoop = f"PATHS = {[str(p) for p in paths]!r}\nCOURSE = {str(course)!r}\n"
    snoop += f"REPO = {str(ROOT)!r}\nPORT = {port}\n" + SNOOP
    return {
        "tamper": synthetic.add_cell(
            synthetic.with_code(release, WRONG), PATCH_TORCH + PATCH_CHECKS, "given-01"
        ),
        "patch-builtins": synthetic.add_cell(
            synthetic.with_code(release, WRONG), PATCH_BUILTINS, "given-01"
        ),
        "delegate": synthetic.with_code(release, DELEGATE),
        "hardcode": synthetic.with_code(reference, {"softmax": hardcoded_softmax()}),
        "snoop": synthetic.add_cell(reference, snoop, "given-01"),
        "loop-cell": synthetic.add_cell(reference, LOOP_IGNORING_SIGINT, "dot_scores_tests"),
        "loop-exercise": synthetic.with_code(reference, {"softmax": LOOPING_SOFTMAX}),
        "memory-exercise": synthetic.with_code(reference, {"softmax": MEMORY_SOFTMAX}),
        "memory-forks": synthetic.add_cell(reference, FORKED_MEMORY, "softmax_tests"),
        "fork-bomb": synthetic.add_cell(reference, FORK_BOMB, "dot_scores_tests"),
        "exit-cell": synthetic.add_cell(reference, "import os\nos._exit(3)\n", "softmax_tests"),
        "exit-exercise": synthetic.with_code(reference, {"dot_scores": EXIT_IN_DOT_SCORES}),
        "protocol-garbage": synthetic.with_code(reference, {"softmax": GARBAGE_SOFTMAX}),
        "break-worker": synthetic.add_cell(reference, BREAK_WORKER, "dot_scores_tests"),
        "deleted-tests": synthetic.drop_cells(
            reference, {"dot_scores_tests", "softmax_tests", "soft_lookup_tests"}
        ),
        "edited-tests": _edited_tests(reference),
        "invalid-json": '{"cells": [ this is not json',
        "missing-notebook": None,
    }


def _edited_tests(reference: dict) -> dict:
    nb = synthetic.with_code(reference, {"softmax": WRONG_SOFTMAX})
    nb = synthetic.edit_cell(nb, "softmax_tests", "pass  # no checks here")
    for cell in nb["cells"]:
        grading = cell.get("metadata", {}).get("nbgrader", {})
        if grading.get("grade_id") == "dot_scores_tests":
            grading["points"] = 100
    return nb


# Expected outcome of each fixture: (status, points per test cell).
FULL = {"dot_scores_tests": 2.0, "softmax_tests": 3.0, "soft_lookup_tests": 3.0}
ZERO = dict.fromkeys(FULL, 0.0)
NO_SOFTMAX = {**FULL, "softmax_tests": 0.0}
# Resource abuse is stopped by whichever limit fires first (CPU time, memory, processes or the
# clock), and on a loaded machine that can go either way: the status may vary, the points not.
STOPPED = {"crashed", "timed out"}
EXPECTED = {
    "loop-exercise": (STOPPED, NO_SOFTMAX),
    "protocol-garbage": ("crashed", NO_SOFTMAX),
    # stopped by the process limit, the memory limit or the clock, whichever comes first
    "fork-bomb": ({"graded", "crashed", "timed out"}, FULL),
    "loop-cell": (STOPPED, FULL),
    "exit-exercise": ("crashed", {**FULL, "dot_scores_tests": 0.0}),
    "memory-forks": (STOPPED, FULL),
    "exit-cell": ("crashed", FULL),
    "patch-builtins": ({"graded", "crashed"}, ZERO),  # it may break its own worker
    "honest-reference": ("graded", FULL),
    "honest-blank": ("graded", ZERO),
    "honest-even": ("graded", {**FULL, "softmax_tests": 0.0}),
    "honest-odd": ("graded", {**ZERO, "softmax_tests": 3.0}),
    "honest-buggy": ("graded", NO_SOFTMAX),
    "honest-warning": ("graded", NO_SOFTMAX),
    "tamper": ("graded", ZERO),
    "break-worker": ("graded", {**ZERO, "dot_scores_tests": 2.0}),
    "delegate": ("graded", ZERO),
    "hardcode": ("graded", NO_SOFTMAX),
    "snoop": ("graded", FULL),
    "memory-exercise": ("graded", NO_SOFTMAX),
    "deleted-tests": ("graded", FULL),
    "edited-tests": ("graded", NO_SOFTMAX),
    "invalid-json": ("invalid", ZERO),
    "missing-notebook": ("invalid", ZERO),
}


# ---------------------------------------------------------------------------- fast tests


def test_wire_rejects_malformed_messages():
    good = wire.pack({"$": "tensor", "dtype": "float32", "shape": [2], "b": 0}, [b"\0" * 8])
    tree, blobs = wire.unpack(good)
    value = wire.Decoder(blobs, lambda node: None).decode(tree)
    assert isinstance(value, torch.Tensor) and value.shape == (2,)
    bad = [
        ({"$": "tensor", "dtype": "float32", "shape": [3], "b": 0}, [b"\0" * 8]),  # size
        ({"$": "tensor", "dtype": "object", "shape": [1], "b": 0}, [b"\0" * 8]),  # dtype
        ({"$": "tensor", "dtype": "float32", "shape": [-1], "b": 0}, [b""]),  # shape
        ({"$": "pickle", "v": "cos\nsystem\n"}, []),  # no such tag
        ({"$": "dict", "v": [[{"$": "list", "v": []}, 1]]}, []),  # unhashable key
        ({"$": "__init__"}, []),
    ]
    nested = 1
    for _ in range(200):
        nested = {"$": "list", "v": [nested]}
    bad.append((nested, []))
    for tree, blobs in bad:
        with pytest.raises(wire.ProtocolError):
            t, b = wire.unpack(wire.pack(tree, blobs))
            wire.Decoder(b, lambda node: None).decode(t)
    with pytest.raises(wire.ProtocolError):
        wire.unpack(b"\0\0\0\0\0\0\0\5{}")


def test_plan_restores_locked_cells_and_readds_deleted_tests():
    source, release = notebooks_of(CH1)
    sources = notebooks.source_cells(
        notebooks.read(AUTOGRADE / "source" / CH1 / f"{CH1}.ipynb"),
        notebooks.read(AUTOGRADE / "release" / CH1 / f"{CH1}.ipynb"),
    )
    reference = synthetic.reference(source, release)
    edited = synthetic.edit_cell(reference, "softmax_tests", "pass")
    edited = synthetic.edit_cell(edited, "given-01", "import numpy as torch")
    dropped = synthetic.drop_cells(edited, {"dot_scores_tests"})
    steps = notebooks.plan(sources, notebooks.read(_write(dropped)))
    tests = [s for s in steps if s.kind == "test"]
    assert [s.grade_id for s in tests] == ["dot_scores_tests", "softmax_tests", "soft_lookup_tests"]
    assert all("### BEGIN HIDDEN TESTS" in s.source for s in tests)  # graded from the source
    assert tests[0].origin == "re-added" and tests[1].origin == "restored"
    ids = [s.grade_id for s in steps]
    assert ids.index("dot_scores_tests") == ids.index("dot_scores") + 1
    given = next(s for s in steps if s.grade_id == "given-01")
    assert given.source.startswith("import torch")
    assert all("### BEGIN SOLUTION" not in s.source for s in steps)


def _write(nb: dict) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "nb.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.parametrize("name", CHAPTERS)
def test_grading_copy_has_stubs_not_references(tmp_path, name):
    """The sandbox's course_lib has the release stubs of the graded chapter's exercises, and
    no line of their reference solutions: delegating to course_lib earns nothing."""
    release = AUTOGRADE / "release" / name / f"{name}.ipynb"
    stubbed = stubs.build(tmp_path, ROOT / "course_lib", [release], name)
    exercises = stubs.exercise_stubs([release])
    assert {n for _, n in stubbed} == set(exercises)  # every exercise of the chapter
    for module, exercise in stubbed:  # each definition is exactly the release stub
        text = (tmp_path / Path(*module.split("."))).with_suffix(".py").read_text()
        tree = ast.parse(text)
        (node,) = [n for n in tree.body if getattr(n, "name", None) == exercise]
        lines = text.splitlines()[stubs._first_line(node) - 1 : node.end_lineno]
        assert "\n".join(lines) == exercises[exercise]


def test_refuses_without_bwrap(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    assert batch.grade(tmp_path, CH1, batch.Options(quiet=True)) == 2
    err = capsys.readouterr().err
    assert "apt-get install bubblewrap" in err and "--no-sandbox" in err


class StandIn:
    """A stand-in model as a check module would define one (see ScriptedDecoder in
    course_lib/checks/seq2seq.py): it checks, as it is called, how the student's code uses it."""

    __module__ = "course_lib.checks.standin"  # as if a check module had defined it

    def __init__(self):
        self.calls, self.public, self._expected = 0, [1, 2], "the expected answer"

    def step(self, x):
        from course_lib.checks.core import CheckFailed

        self.calls += 1
        if x != 1:
            raise CheckFailed("step must be fed 1")
        return x + 1


STAND_IN_USER = """
def decode(model):
    try:
        model.step(2)  # the stand-in complains ...
    except Exception:
        pass  # ... and the student's code swallows it
    return model.step(1)

def probe(model):
    seen = {}
    for name in ("_expected", "public", "step"):
        try:
            seen[name] = type(getattr(model, name)).__name__
        except AttributeError:
            seen[name] = "refused"
    try:
        model.calls = 0
    except AttributeError:
        seen["set"] = "refused"
    return seen
"""


def test_check_objects_stay_with_the_judge(tmp_path, bwrap_works):
    """A check's stand-in object is not copied into the sandbox: the student's code calls it
    back in the judge, where its state is kept, where its complaints count even if the
    student's code catches them, and from where nothing but its public attributes is
    reachable."""
    from autograde.trusted.remote import Session
    from autograde.trusted.sandbox import SandboxConfig, WorkerProcess
    from course_lib.checks.core import CheckFailed

    stubs.build(tmp_path / "grading", ROOT / "course_lib", [], "none")
    os.chmod(tmp_path, 0o755)
    session = Session(WorkerProcess(SandboxConfig(tmp_path / "grading")), frozenset(), 1)
    session.deadline = time.monotonic() + 120
    try:
        session.wait_ready()
        assert session.exec_cell(STAND_IN_USER) is None
        names = session.resolve(["decode", "probe"])
        model = StandIn()
        with pytest.raises(CheckFailed, match="step must be fed 1"):
            names["decode"](model)
        assert model.calls == 2  # both calls reached the judge's object
        seen = names["probe"](model)
        assert seen == {
            "_expected": "refused",
            "public": "list",
            "step": "CallbackStub",
            "set": "refused",
        }
    finally:
        session.close()


def test_hardcoded_answers_pass_with_public_seeds():
    """The control for the "hardcode" fixture: without the grader's secret seeds, answers
    looked up from the public checks' inputs earn the points."""
    from tests.exercises import namespace
    from tests.exercises import scores as plain_scores
    from tools.chapters import SOURCES, load

    chapter = load(SOURCES / f"{CH1}.md")
    earned = plain_scores(chapter, namespace(chapter, hardcoded_softmax()))
    assert earned["softmax_tests"] == 3


# ---------------------------------------------------------------------------- slow tests


@pytest.mark.slow
def test_hostile_batch(tmp_path, bwrap_works):
    """All fixtures in one batch on two workers: each gets its status and only its points;
    the honest ones score the same as when graded alone on one worker."""
    course = make_course(tmp_path, [CH1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    subs = {**honest(CH1), **honest_ch1(), **hostile(course, listener.getsockname()[1])}
    for student in EXPECTED:
        nb = subs.get(student)
        if nb is None:
            (course / "submitted" / student / CH1).mkdir(parents=True)
            (course / "submitted" / student / CH1 / "README.txt").write_text("forgot it")
        else:
            synthetic.submit(nb, course, student, CH1, CH1)
    students = [a for s in EXPECTED for a in ("--student", s)]
    done = grade(course, CH1, "--workers", "2", *FAST_LIMITS, *students)
    listener.close()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    got = results(course, CH1)
    report = {s: (got[s]["status"], scores(got[s], CH1)) for s in got}
    for student, (status, _) in EXPECTED.items():
        if isinstance(status, set) and report.get(student, ("",))[0] in status:
            report[student] = (status, report[student][1])
    assert report == EXPECTED, done.stdout
    # the gradebook has the same scores, and nbgrader's export reads them
    assert gradebook_scores(course, CH1) == {s: e[1] for s, e in EXPECTED.items()}
    rows = {r["student_id"]: float(r["score"]) for r in export(course)}
    assert rows == {s: sum(e[1].values()) for s, e in EXPECTED.items()}
    # the summary names every student's status
    lines = done.stdout.splitlines()
    for student in EXPECTED:
        status = got[student]["status"]
        assert any(line.startswith(student) and status in line for line in lines)
    # the autograded notebooks (formgrader, nbgrader's generate_feedback) hold no hidden test
    for path in (course / "autograded").glob(f"*/{CH1}/{CH1}.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["metadata"].get("nbgrader", {}).get("grade"):
                assert "hidden_check_" not in cell["source"], path
                assert "BEGIN HIDDEN" not in cell["source"], path
    # the student's patches were in effect in their process, and gained nothing
    patched = (course / "autograded" / "tamper" / CH1 / f"{CH1}.ipynb").read_text()
    assert "patched: True" in patched
    # snooping found nothing; nothing was written outside the sandbox
    snoop = json.loads((course / "autograded" / "snoop" / CH1 / f"{CH1}.ipynb").read_text())
    printed = "".join(o.get("text", "") for c in snoop["cells"] for o in c.get("outputs", []))
    assert "LEAK" not in printed and printed.count("blocked:") == 15, printed
    assert not (course / "pwned.txt").exists()
    # nothing of the student's is left running
    if os.geteuid() == 0:  # as root, every sandbox ran as a user id of its own
        notebooks_graded = [nb for r in got.values() for nb in r["notebooks"].values()]
        used = [u for nb in notebooks_graded for u in nb["sandbox_uids"]]
        assert len(used) == len(set(used)) >= len(got) - 1  # all but the missing notebook
        assert not [p for p in _all_pids() if _uid(p) in set(used)]
    # feedback: names, points, messages; no test code, no hidden check, no traceback
    feedback_mod.generate(course, CH1)
    page = (course / "feedback" / "honest-buggy" / CH1 / f"{CH1}.html").read_text()
    assert "softmax_tests" in page and "0 / 3" in page and "dot_scores_tests" in page
    assert "did you take the softmax over the wrong axis?" in page  # the check's message
    hidden = (AUTOGRADE / "hidden_checks" / "attention.py").read_text().splitlines()
    source = notebooks.read(course / "source" / CH1 / f"{CH1}.ipynb")
    test_code = [
        line.strip()
        for cell in notebooks.source_cells(source, None)
        if cell.is_test
        for line in cell.source.splitlines()
        if len(line.strip()) > 20 and not line.startswith("#")
    ]
    assert len(test_code) >= 6
    for student in EXPECTED:
        for page_path in (course / "feedback" / student / CH1).glob("*.html"):
            page = page_path.read_text()
            assert "Traceback" not in page and 'File "' not in page
            assert not [ln for ln in hidden if len(ln.strip()) > 20 and ln.strip() in page]
            assert not [ln for ln in test_code if ln in page]


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


@pytest.mark.slow
def test_faithful_to_plain_nbgrader(tmp_path, bwrap_works):
    """Honest submissions score exactly what `nbgrader autograde` gives them, cell by cell,
    and what nbgrader's export reads back."""
    subs = honest_ch1()
    ours = make_course(tmp_path / "ours", [CH1])
    plain = make_course(tmp_path / "plain", [CH1])
    for student, nb in subs.items():
        for course in (ours, plain):
            synthetic.submit(nb, course, student, CH1, CH1)
    nbgrader(plain, "generate_assignment", CH1, "--force")
    nbgrader(plain, "autograde", CH1, "--create", "--force")
    done = grade(ours, CH1, "--workers", "1")  # serially here, in parallel in the batch test
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert all(r["status"] == "graded" for r in results(ours, CH1).values()), done.stdout
    expected = gradebook_scores(plain, CH1)
    assert gradebook_scores(ours, CH1) == expected == {s: EXPECTED[s][1] for s in subs}
    assert [r["score"] for r in export(ours)] == [r["score"] for r in export(plain)]


def exercises_only(nb: dict) -> dict:
    """``nb`` without its demonstrations (code cells nbgrader does not track): the points
    come from the exercise, given and test cells alone (test cells import their own checks),
    and the demonstrations (chapter 7 trains models, runs torchrun and a benchmark) would
    take most of the time. Chapter 1's batch test grades whole notebooks."""
    keep = [c for c in nb["cells"] if c["cell_type"] != "code" or "nbgrader" in c["metadata"]]
    return {**nb, "cells": keep}


def direct_scores(name: str) -> dict[str, dict[str, float]]:
    """What the chapter's test cells give the honest submissions' code when run directly
    (tests/exercises.py: nbgrader minus the kernel)."""
    from tests.exercises import namespace, scores
    from tools.chapters import SOURCES, load, strip_markers

    chapter = load(SOURCES / f"{name}.md")
    references = [strip_markers(cell.source) for cell in chapter.cells("solution")]
    parts = {"honest-blank": [], "honest-even": references[0::2], "honest-odd": references[1::2]}
    return {
        student: {
            k: float(v)
            for k, v in scores(chapter, namespace(chapter, "\n".join(codes), released=True)).items()
        }
        for student, codes in parts.items()
    }


def test_chapter_1_expectations_are_the_test_cells():
    """The batch test's expectations for chapter 1's honest submissions are what its test
    cells give (chapters 2 onwards are checked against them in the next test)."""
    assert direct_scores(CH1) == {s: EXPECTED[s][1] for s in honest(CH1)}


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in CHAPTERS if name != CH1])
def test_every_chapter_grades_like_its_test_cells(tmp_path, bwrap_works, name):
    """For every chapter (the first is in the batch test), the command gives the blank and
    partly done submissions what the chapter's test cells give the same code when run
    directly; between the two partial ones, every exercise's reference earns its points
    through the grader's proxies: the chapter's checks work under this grader."""
    from tools.chapters import SOURCES, load

    chapter = load(SOURCES / f"{name}.md")
    subs = {student: exercises_only(nb) for student, nb in honest(name).items()}
    course = make_course(tmp_path, [name])
    for student, nb in subs.items():
        synthetic.submit(nb, course, student, name, name)
    done = grade(course, name, "--workers", "2")  # nbgrader's own time limits
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = results(course, name)
    assert all(r["status"] == "graded" for r in got.values()), done.stdout
    assert {s: scores(got[s], name) for s in subs} == direct_scores(name)
    full = {c.metadata["grade_id"]: float(c.metadata["points"]) for c in chapter.cells("tests")}
    assert set(scores(got["honest-blank"], name).values()) == {0.0}
    even, odd = scores(got["honest-even"], name), scores(got["honest-odd"], name)
    assert {g: even[g] + odd[g] for g in full} == full


@pytest.mark.slow
def test_resumes_after_kill_and_is_idempotent(tmp_path, bwrap_works):
    course = make_course(tmp_path, [CH1])
    source, release = notebooks_of(CH1)
    students = [f"student-{i}" for i in range(5)]
    for i, student in enumerate(students):
        synthetic.submit(
            synthetic.partly(source, release, {0, 1, 2} - {i % 3}), course, student, CH1, CH1
        )
    cmd = [
        sys.executable,
        "-m",
        "autograde",
        "grade",
        CH1,
        "--course",
        str(course),
        "--workers",
        "1",
    ]
    run = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(results(course, CH1)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    first = results(course, CH1)
    assert 2 <= len(first) < len(students), "the run should be killed halfway"
    done = grade(course, CH1, "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("already graded (unchanged); skipped") == len(first)
    second = results(course, CH1)
    for student, record in first.items():  # finished students were not regraded
        assert second[student]["graded_at"] == record["graded_at"]
    assert set(second) == set(students)
    expected = {s: 8.0 - (2.0, 3.0, 3.0)[i % 3] for i, s in enumerate(students)}
    rows = export(course)
    assert {r["student_id"]: float(r["score"]) for r in rows} == expected
    again = grade(course, CH1)  # idempotent: nothing regraded, nothing changed
    assert again.stdout.count("already graded (unchanged); skipped") == len(students)
    assert export(course) == rows, (rows, again.stdout)
    assert results(course, CH1) == second


@pytest.mark.slow
def test_chapter_7_step_bugs_lose_points_under_this_grader(tmp_path, bwrap_works):
    """train_step runs in the sandbox on the check's model, optimizer and scaler, sent there
    by value: the bugs the check sees through state that must travel with them (gradients
    left from before, the passes recorded in the model's buffers) are caught here too."""
    from tests.test_grading_ch07 import MUTANTS

    name = "07-training-on-a-gpu"
    source, release = notebooks_of(name)
    reference = exercises_only(synthetic.reference(source, release))
    bugs = ["step: no zero-grad", "step: autocast around the backward pass", "step: no no_sync"]
    course = make_course(tmp_path, [name])
    synthetic.submit(reference, course, "reference", name, name)
    prelude = "import contextlib\n\nimport torch\nfrom torch import nn\n"
    for i, bug in enumerate(bugs):
        code = prelude + MUTANTS[bug][1]
        synthetic.submit(synthetic.with_code(reference, {"train_step": code}), course,
                         f"bug-{i}", name, name)  # fmt: skip
    done = grade(course, name, "--workers", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = {s: scores(r, name) for s, r in results(course, name).items()}
    assert got["reference"] == {"lr_factor_tests": 2.0, "train_step_tests": 4.0, "shard_tests": 3.0}
    for i, bug in enumerate(bugs):
        assert got[f"bug-{i}"] == {**got["reference"], "train_step_tests": 0.0}, bug
