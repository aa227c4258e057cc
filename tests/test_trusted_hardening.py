"""Issue 8: the trusted grader against a determined student, class by class.

One batch on two workers holds hostile fixtures of classes 1 (the submission folder), 3 (the
judge believing the worker) and 4 (feedback) next to honest students, who must score exactly
what they score alone; class 2 (kernel-level isolation) has its own fixtures, run with the
cgroup where the machine has one and again with the documented fallback. The fast tests
cover the pieces: reading submissions, the seccomp program, cgroup v2 on a fake tree, the
wire's bounds and the structured verdicts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autograde.trusted import batch, cgroups, seccomp, submission, synthetic, wire
from autograde.trusted import feedback as feedback_mod
from tests.test_trusted_grading import (
    CH1,
    FULL,
    NO_SOFTMAX,
    STOPPED,
    ZERO,
    bwrap_works,  # noqa: F401 - the fixture
    grade,
    honest_ch1,
    make_course,
    notebooks_of,
    results,
    scores,
)
from tools.chapters import ROOT
from tools.sync import venv_env

FAST = ["--timeout", "8", "--notebook-timeout", "120", "--memory", "1536"]


def _submit(course: Path, student: str, nb) -> Path:
    synthetic.submit(nb, course, student, CH1, CH1)
    return course / "submitted" / student / CH1


# ------------------------------------------------------------------- class 1: fast tests


def test_student_ids():
    assert submission.student_id_problem("alice.b-2@uni.edu") is None
    for bad in ("", ".hidden", "a/b", "a b", "x" * 200, "caf\udce9", "tab\t", "..", "-x"):
        assert submission.student_id_problem(bad), bad


def test_reading_refuses_links_devices_and_oversize(tmp_path):
    step = tmp_path / "submitted"
    good = step / "good" / "A"
    good.mkdir(parents=True)
    (good / "nb.ipynb").write_text("{}")
    (good / "timestamp.txt").write_text("2024-05-01 10:00:00.000000 UTC")
    found = submission.read(step, "good", "A", ["nb"], lambda t: t)
    assert found.notebooks == {"nb": b"{}"} and not found.problems and not found.invalid
    (tmp_path / "secret.ipynb").write_text('{"secret": 1}')
    cases = step / "links" / "A"
    cases.mkdir(parents=True)
    (cases / "nb.ipynb").symlink_to(tmp_path / "secret.ipynb")
    found = submission.read(step, "links", "A", ["nb"], lambda t: t)
    assert "symbolic link" in found.problems["nb"] and "nb" not in found.notebooks
    fifo = step / "fifo" / "A"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "nb.ipynb")
    assert "not a regular file" in submission.read(step, "fifo", "A", ["nb"], str).problems["nb"]
    sparse = step / "sparse" / "A"
    sparse.mkdir(parents=True)
    with open(sparse / "nb.ipynb", "wb") as f:
        f.truncate(64 << 30)  # 64 GiB, no blocks
    assert "larger than" in submission.read(step, "sparse", "A", ["nb"], str).problems["nb"]
    (step / "linked-student").symlink_to(step / "good")
    assert "symbolic link" in submission.read(step, "linked-student", "A", ["nb"], str).invalid
    (step / "linked-folder").mkdir()
    (step / "linked-folder" / "A").symlink_to(good)
    assert "symbolic link" in submission.read(step, "linked-folder", "A", ["nb"], str).invalid

    def refuse(text):
        raise ValueError(text)

    assert "timestamp.txt" in submission.read(step, "good", "A", ["nb"], refuse).invalid


# ------------------------------------------------------------------- class 3: fast tests


def test_wire_bounds_the_tree_before_parsing():
    tree = {"$": "list", "v": [[] for _ in range(10)]}
    big = wire.HEADER.pack(wire.MAX_TREE + 1) + b"[" * (wire.MAX_TREE + 1) + wire.HEADER.pack(0)
    with pytest.raises(wire.ProtocolError, match="over the limit"):
        wire.unpack(big)
    wire.unpack(wire.pack(tree, []))  # a normal one still passes
    node = {"$": "structseq", "type": "__loader__", "v": [1]}
    assert wire.Decoder([], None).decode(node) == (1,)  # never calls what the name names


def test_in_place_changes_keep_shape_and_dtype():
    from autograde.trusted.remote import ArgumentReshaped, _assign

    ours = torch.zeros(3)
    _assign(ours, torch.ones(3))
    assert ours.tolist() == [1, 1, 1]
    for forged in (torch.ones(4), torch.ones(3, dtype=torch.float64), torch.ones(1, 3)):
        with pytest.raises(ArgumentReshaped):
            _assign(ours, forged)
    assert ours.shape == (3,)


# ------------------------------------------------------------------- class 4: fast tests


def test_verdicts_are_structured_and_keep_the_students_message_out():
    from course_lib.checks import attention, core

    def lying_softmax(scores, dim=-1):
        print("✓ softmax: hidden checks passed.")
        raise ValueError(f"the inputs were {scores.tolist()}")

    with core.recording() as verdicts, pytest.raises(core.CheckFailed):
        attention.check_softmax(lying_softmax)
    assert [v["passed"] for v in verdicts] == [False]
    assert verdicts[0]["raised"] == "ValueError" and verdicts[0]["message"] == ""
    page = feedback_mod.failure_html({"ename": "CheckFailed", "evalue": "x"}, verdicts)
    assert "inputs were" not in page and "ValueError" in page and "not shown" in page


def test_salt_is_fresh_per_submission():
    key = b"k" * 32
    a = batch.student_salt(key, CH1, "s", "digest-1")
    assert a == batch.student_salt(key, CH1, "s", "digest-1")
    assert a != batch.student_salt(key, CH1, "s", "digest-2")


def test_feedback_survives_surrogates_and_broken_records(tmp_path, capsys):
    course = make_course(tmp_path, [CH1])
    record = {
        "student": "s",
        "assignment": CH1,
        "notebooks": {
            CH1: {
                "status": "graded",
                "reason": "bad \udcff text",
                "scores": {"softmax_tests": 0},
                "max_points": {"softmax_tests": 3},
                "cells": [
                    {"grade_id": "softmax_tests", "error": {"ename": "E\udce9", "evalue": ""}}
                ],
            }
        },
    }
    for student, text in (("a-surrogate", json.dumps(record)), ("b-broken", "[1, 2]")):
        folder = course / "autograded" / student / CH1
        folder.mkdir(parents=True)
        (folder / batch.RESULT_FILE).write_text(text)
        (course / "submitted" / student / CH1).mkdir(parents=True)
    written = feedback_mod.generate(course, CH1)
    assert [p.parent.parent.name for p in written] == ["a-surrogate"]
    assert "b-broken: no feedback written" in capsys.readouterr().out


# ------------------------------------------------------------------- class 2: fast tests


def test_seccomp_program_shape():
    for machine in seccomp.ARCHES:
        code = seccomp.program(machine)
        assert len(code) % 8 == 0 and len(code) // 8 == len(seccomp.BLOCKED) + 6 + (
            machine == "x86_64"
        )
    assert seccomp.program("pdp11") is None


def test_cgroup_v2_on_a_fake_tree(tmp_path, monkeypatch):
    """The v2 path writes the v2 files (a real v2 hierarchy is tested where CI has one)."""
    group = cgroups._own_groups().get("", "/").lstrip("/")
    parent = tmp_path / group
    parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids")
    (parent / "cgroup.subtree_control").write_text("")
    monkeypatch.setenv("AUTOGRADE_CGROUP_ROOT", str(tmp_path))
    monkeypatch.delenv("AUTOGRADE_CGROUPS", raising=False)
    hierarchy, problem = cgroups.detect()
    assert hierarchy is not None and hierarchy.version == 2, problem
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    made = cgroups.Group(hierarchy, 1 << 30, 32)
    (folder,) = made.folders
    assert (folder / "memory.max").read_text() == str(1 << 30)
    assert (folder / "pids.max").read_text() == "32"
    assert (folder / "cpu.weight").read_text() == "100"
    for name in os.listdir(folder):
        os.unlink(folder / name)
    made.remove()
    assert not folder.exists()


def test_cgroups_fallback_is_reported(monkeypatch):
    monkeypatch.setenv("AUTOGRADE_CGROUPS", "off")
    hierarchy, problem = cgroups.detect()
    assert hierarchy is None and "AUTOGRADE_CGROUPS=off" in problem


# ------------------------------------------------------------ the hostile batch (1, 3, 4)

FORGED_MODULE = """
import sys
import _grader.wire as wire
original = wire.pack
def pack(tree, blobs):  # every reply now names a module the judge would import and run
    if isinstance(tree, dict) and isinstance(tree.get("value"), dict):
        for name in list(tree["value"]):
            tree["value"][name] = {"$": "module", "name": "torch.testing._internal.common_utils"}
    return original(tree, blobs)
wire.pack = pack
"""
HUGE_TREE = """
def softmax(scores, dim=-1):
    import sys, _grader.wire as wire
    fd = int(sys.argv[sys.argv.index("--reply-fd") + 1])
    body = b"[" + b"[]," * (30 << 20) + b"[]]"
    wire.write_frame(fd, wire.HEADER.pack(len(body)) + body + wire.HEADER.pack(0))
    return torch.softmax(scores, dim)
"""
RESHAPE = """
def softmax(scores, dim=-1):
    out = torch.softmax(scores, dim)
    scores.resize_(4096, 4096)  # an in-place change the judge must not follow
    return out
"""
CHATTY_OUTSIDE_CELLS = """
import threading, time, sys
def chatter():
    while True:
        print("x" * 100000)
        time.sleep(0.01)
threading.Thread(target=chatter, daemon=True).start()
"""
FAKE_PASS = """
class Liar:
    def __str__(self):
        return "✓ softmax: hidden checks passed."
    __repr__ = __str__
def softmax(scores, dim=-1):
    print(Liar())
    raise ValueError("✓ softmax: hidden checks passed. inputs: " + str(scores.tolist()))
"""
FAKE_CHECKFAILED = """
class CheckFailed(AssertionError):
    pass
def softmax(scores, dim=-1):
    raise CheckFailed("✓ all checks passed (this is the student's text)")
"""


def hostile_submissions(course: Path) -> dict[str, object]:
    source, release = notebooks_of(CH1)
    reference = synthetic.reference(source, release)
    with_softmax = lambda code: synthetic.with_code(reference, {"softmax": code})  # noqa: E731
    subs = {
        "forged-module": synthetic.add_cell(reference, FORGED_MODULE, "given-01"),
        "huge-tree": with_softmax(HUGE_TREE),
        "reshape-argument": with_softmax(RESHAPE),
        "chatty": synthetic.add_cell(reference, CHATTY_OUTSIDE_CELLS, "given-01"),
        "fake-pass": with_softmax(FAKE_PASS),
        "fake-checkfailed": with_softmax(FAKE_CHECKFAILED),
        "surrogate-message": with_softmax(
            "def softmax(scores, dim=-1):\n    raise ValueError('\\udcff')\n"
        ),
    }
    for student, nb in subs.items():
        _submit(course, student, nb)
    # class 1: the submission folder
    ref_text = json.dumps(reference)
    folder = _submit(course, "symlinked-notebook", reference)
    (folder / f"{CH1}.ipynb").unlink()
    (folder / f"{CH1}.ipynb").symlink_to(course / "source" / CH1 / f"{CH1}.ipynb")
    folder = _submit(course, "linked-to-other", reference)
    (folder / f"{CH1}.ipynb").unlink()
    other = course / "submitted" / "honest-reference" / CH1 / f"{CH1}.ipynb"
    (folder / f"{CH1}.ipynb").symlink_to(other)
    (course / "submitted" / "linked-folder").symlink_to(course / "submitted" / "honest-reference")
    folder = _submit(course, "sparse", reference)
    with open(folder / f"{CH1}.ipynb", "r+b") as f:
        f.truncate(32 << 30)
    folder = _submit(course, "bad-timestamp", reference)
    (folder / "timestamp.txt").write_text("the day after tomorrow")
    folder = _submit(course, "good-timestamp", json.loads(ref_text))
    (folder / "timestamp.txt").write_text("2024-05-01 10:00:00.000000 UTC")
    bad_name = os.fsencode(course / "submitted") + b"/caf\xe9"
    os.makedirs(bad_name + os.fsencode(f"/{CH1}"))
    with open(bad_name + os.fsencode(f"/{CH1}/{CH1}.ipynb"), "w") as f:
        f.write(ref_text)
    return subs


HOSTILE_EXPECTED = {
    "forged-module": ({"graded", "crashed"}, ZERO),
    "huge-tree": ("crashed", NO_SOFTMAX),
    "reshape-argument": ("graded", NO_SOFTMAX),
    "chatty": ("graded", FULL),
    "fake-pass": ("graded", NO_SOFTMAX),
    "fake-checkfailed": ("graded", NO_SOFTMAX),
    "surrogate-message": ("graded", NO_SOFTMAX),
    "symlinked-notebook": ("invalid", ZERO),
    "linked-to-other": ("invalid", ZERO),
    "linked-folder": ("invalid", ZERO),
    "sparse": ("invalid", ZERO),
    "bad-timestamp": ("invalid", ZERO),
    "good-timestamp": ("graded", FULL),
    "honest-reference": ("graded", FULL),
    "honest-buggy": ("graded", NO_SOFTMAX),
    "honest-warning": ("graded", NO_SOFTMAX),
}


def _check(report: dict, expected: dict) -> None:
    for student, (status, _) in expected.items():
        if isinstance(status, set) and report.get(student, ("",))[0] in status:
            report[student] = (status, report[student][1])
    assert report == expected


@pytest.mark.slow
@pytest.mark.usefixtures("bwrap_works")
def test_hostile_batch_classes_1_3_4(tmp_path):
    course = make_course(tmp_path, [CH1])
    for student, nb in honest_ch1().items():
        _submit(course, student, nb)
    hostile_submissions(course)
    done = grade(course, CH1, "--workers", "2", *FAST)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    got = results(course, CH1)
    assert "'caf\\udce9'" in done.stdout and "not valid UTF-8" in done.stdout
    _check({s: (r["status"], scores(r, CH1)) for s, r in got.items()}, HOSTILE_EXPECTED)
    for line in done.stdout.splitlines():  # the summary: each student once, with a status
        if line.startswith("symlinked-notebook"):
            assert "invalid" in line and "symbolic link" in line
    # class 3: the judge's log holds nothing of the chatty student's output
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("**/judge-*.log"))
    assert "x" * 1000 not in logs
    # class 4: the page shows check verdicts only, never the student's text as a verdict
    assert feedback_mod.generate(course, CH1)
    for student in ("fake-pass", "fake-checkfailed", "surrogate-message"):
        page = (course / "feedback" / student / CH1 / f"{CH1}.html").read_text()
        assert "softmax: hidden checks passed" not in page and "inputs:" not in page
        assert "student's text" not in page
        assert "code raised" in page
    # a rerun changes nothing (the timestamp and invalid records do not stop later runs)
    again = grade(course, CH1, "--workers", "2", *FAST)
    assert again.returncode == 0 and again.stdout.count("already graded") >= len(got)


@pytest.mark.slow
@pytest.mark.usefixtures("bwrap_works")
def test_fresh_inputs_per_submission(tmp_path):
    """The lookup-table attack: inputs the checks drew for one submission are not those of
    the next (a changed submission), and an unchanged one regrades identically."""
    course = make_course(tmp_path, [CH1])
    source, release = notebooks_of(CH1)
    recorder = (
        "SEEN = []\n"
        "def softmax(scores, dim=-1):\n"
        "    SEEN.append(scores.flatten()[:3].tolist())\n"
        "    print(SEEN[-1])\n"
        "    return torch.softmax(scores, dim)\n"
    )
    nb = synthetic.with_code(synthetic.reference(source, release), {"softmax": recorder})
    _submit(course, "s", nb)

    def printed() -> str:
        path = course / "autograded" / "s" / CH1 / f"{CH1}.ipynb"
        cells = json.loads(path.read_text())["cells"]
        ids = [c["metadata"].get("nbgrader", {}).get("grade_id") for c in cells]
        return json.dumps(cells[ids.index("softmax_tests")]["outputs"])

    assert grade(course, CH1, "--student", "s", *FAST).returncode == 0
    first = printed()
    assert grade(course, CH1, "--student", "s", "--force", *FAST).returncode == 0
    assert printed() == first  # unchanged: the same inputs
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "resubmitted"})
    _submit(course, "s", nb)
    assert grade(course, CH1, "--student", "s", *FAST).returncode == 0
    assert printed() != first


# ------------------------------------------------------------------------- class 2 batch

SPINNERS = """
import os
for _ in range(40):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
"""
BUFFER_HOG = """
import fcntl, os
pipes = []
try:
    while True:  # kernel pipe buffers, which neither RLIMIT_AS nor the watchdog sees
        r, w = os.pipe()
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        os.set_blocking(w, False)
        try:
            while True:
                os.write(w, b"x" * 65536)
        except BlockingIOError:
            pass
        pipes.append((r, w))
except OSError:  # the open-files limit (or the cgroup) stops it
    pass
print("pipes", len(pipes))
"""
KEYRING = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
key = libc.syscall(248, b"user", b"planted", b"secret", 6, -4)  # add_key to the user keyring
print("add_key", key, ctypes.get_errno())
import os
try:
    os.memfd_create("x")
    print("memfd allowed")
except OSError as error:
    print("memfd refused", error.errno)
"""


REAP = """
import os, signal, subprocess
from autograde.trusted import sandbox
sandbox._adopt_orphans()
sh = subprocess.run(["sh", "-c", "sleep 60 & echo $!"], capture_output=True, text=True)
orphan = int(sh.stdout)
with open(f"/proc/{orphan}/stat") as f:
    assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()  # handed to us
os.kill(orphan, signal.SIGKILL)
sandbox._reap([orphan])
assert not os.path.exists(f"/proc/{orphan}")
if os.geteuid() == 0:  # one the list missed, still running: found, killed, reaped by its uid
    uid = 2**31 - 7
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c"]
    sh = subprocess.run([*cmd, "sleep 60 & echo $!"], capture_output=True, text=True)
    missed = int(sh.stdout)
    sandbox._reap([], uid)
    assert not os.path.exists(f"/proc/{missed}")
print("reaped")
"""


def test_killed_sandbox_processes_are_reaped():
    """An orphan of a killed sandbox (its pid-namespace init, say) comes to the grader, which
    reaps it before going on: no zombie of a sandbox uid is left for the machine's init; as
    root, every process of the sandbox's uid is found, even one its list of pids missed."""
    done = subprocess.run(
        [sys.executable, "-c", REAP], cwd=ROOT, env=venv_env(), capture_output=True, text=True
    )
    assert done.stdout.strip() == "reaped", done.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("bwrap_works")
@pytest.mark.parametrize("cgroup", ["detected", "off"])
def test_kernel_isolation(tmp_path, cgroup):
    """Spinners in their own sessions, shared memory and kernel buffers, keyrings: the
    abusers lose at most their own points, the honest student graded beside them nothing."""
    course = make_course(tmp_path, [CH1])
    source, release = notebooks_of(CH1)
    reference = synthetic.reference(source, release)
    _submit(course, "honest-reference", reference)
    _submit(course, "spinners", synthetic.add_cell(reference, SPINNERS, "given-01"))
    _submit(course, "buffer-hog", synthetic.add_cell(reference, BUFFER_HOG, "given-01"))
    _submit(course, "keyring", synthetic.add_cell(reference, KEYRING, "given-01"))
    env = venv_env()
    if cgroup == "off":
        env["AUTOGRADE_CGROUPS"] = "off"
    cmd = [sys.executable, "-m", "autograde", "grade", CH1, "--course", str(course)]
    cmd += ["--workers", "2", "--timeout", "20", "--notebook-timeout", "120", "--memory", "1536"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    protections = [line for line in done.stdout.splitlines() if line.startswith("sandbox:")]
    if cgroup == "off":
        assert any("no cgroup (cgroups turned off" in line for line in protections), protections
    elif cgroups.detect()[0] is not None:
        assert any("cgroup v" in line for line in protections), protections
    assert any("seccomp filter" in line for line in protections)
    got = results(course, CH1)
    assert got["honest-reference"]["status"] == "graded"
    assert scores(got["honest-reference"], CH1) == FULL
    assert got["spinners"]["status"] in STOPPED | {"graded"}
    assert got["buffer-hog"]["status"] in STOPPED | {"graded"}
    assert scores(got["keyring"], CH1) == FULL
    nb = (course / "autograded" / "keyring" / CH1 / f"{CH1}.ipynb").read_text()
    assert "add_key -1 1" in nb and "memfd refused 1" in nb  # EPERM from the filter
    uids = [u for r in got.values() for n in r["notebooks"].values() for u in n["sandbox_uids"]]
    if os.geteuid() == 0:
        assert len(uids) == len(set(uids))  # a fresh identity for every sandbox
    # nothing of theirs is left, not even a zombie: the grader reaps its sandboxes for good
    leftover = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout
    assert not set(uids) & {int(u) for u in leftover.split()}


# ------------------------------------------------------------------- class 5: the checks

ZEROING_SOFTMAXES = {
    "zeroes its input, returns uniform weights": lambda s, dim=-1: torch.softmax(s.zero_(), dim),
    "fills its input with a constant": lambda s, dim=-1: torch.softmax(s.fill_(1.0), dim),
}


@pytest.mark.parametrize("name", ZEROING_SOFTMAXES)
def test_chapter_1_probes_use_private_copies(name):
    """A softmax that damages its input cannot steer later probes or the oracles."""
    from course_lib.checks import attention, core

    with pytest.raises(core.CheckFailed, match="modified in place"):
        attention.check_softmax(ZEROING_SOFTMAXES[name])
    with pytest.raises(core.CheckFailed):
        attention.check_dot_scores(lambda q, k: q.zero_() @ k.T)


def test_check_modules_hold_no_solution():
    """Nothing a check module of chapters 1-3 defines (oracles, helpers, stand-ins) passes the
    check of any function or attention exercise when a submission uses it as its answer."""
    import inspect

    from torch import nn

    from course_lib.checks import attention, core, scaled_attention, seq2seq

    function_checks = [
        attention.check_dot_scores,
        attention.check_softmax,
        attention.check_soft_lookup,
        scaled_attention.check_scaled_dot_product_attention,
    ]
    modules = (core, attention, scaled_attention, seq2seq)
    defined = [
        obj
        for module in modules
        for name, obj in vars(module).items()
        if getattr(obj, "__module__", None) == module.__name__ and not name.startswith("check_")
    ]
    assert len(defined) > 20
    passed = []
    for obj in defined:
        candidates = [(check, obj) for check in function_checks if inspect.isfunction(obj)]
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            candidates.append((seq2seq.check_additive_attention, obj))
        for check, candidate in candidates:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    check(candidate)
            except Exception:  # noqa: BLE001, S112 - failing in any way is what is asserted
                continue
            passed.append(f"{obj.__qualname__} passes {check.__name__}")
    assert not passed
