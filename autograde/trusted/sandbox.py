"""Start one worker process in a bubblewrap sandbox, with limits, and kill it for sure.

The sandbox sees, read-only: the system's /usr (and the /lib, /bin links), the Python
installation and the virtual environment, and the *grading directory* (the worker's code and
a copy of course_lib whose exercises for the graded assignment are stubs; see ``stubs``).
Nothing else of the host: not the repository, not solutions/, not autograde/source, the hidden
checks or the gradebook. The only writable place is a size-limited tmpfs at /tmp. It has no
network (a new, empty network namespace), its own PID, IPC and UTS namespaces, and dies with
the grader.

Limits, enforced by the kernel: a control group per sandbox (``cgroups``: memory including
shared memory and kernel buffers, process count, an equal CPU share) where the machine allows
one, plus, always, address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU), process count
(RLIMIT_NPROC of the sandbox's own user id), open files (RLIMIT_NOFILE), file size
(RLIMIT_FSIZE) and a watchdog on the resident memory of all the sandbox's processes together.
Every sandbox runs in a user namespace as a user id of its own (``identity``: as root, a fresh
one per sandbox, never reused) under a seccomp filter (``seccomp``). The grader enforces
wall-clock limits itself and kills the whole sandbox: its cgroup, its process group, every
process in it, and with bubblewrap's PID-namespace init everything the student might have
started.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import cgroups, identity, seccomp

INSTALL_HINT = (
    "bubblewrap (bwrap) is needed to run untrusted submissions in a sandbox. Install it with "
    "`apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap` (Fedora), or, "
    "only for code you trust, pass --no-sandbox."
)
BOOT = (
    "import sys; sys.path.insert(0, sys.argv[sys.argv.index('--lib') + 1]); "
    "from _grader import worker; worker.main()"
)


@dataclass
class Limits:
    memory: int = 4 << 30  # bytes of address space per process, and of RSS in total
    cpu_seconds: int = 1800  # per process
    processes: int = 64  # processes and threads of the sandbox's user
    open_files: int = 256  # per process (each socket or pipe buffer needs one)
    tmp_size: int = 256 << 20  # the writable /tmp
    file_size: int = 256 << 20


@dataclass
class SandboxConfig:
    grading_dir: Path  # the worker package and the stubbed course_lib
    limits: Limits = field(default_factory=Limits)
    sandbox: bool = True
    python: str = sys.executable
    threads: int = 1  # torch threads of the student's code


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def probe() -> str | None:
    """None when bubblewrap can create the sandbox here, else what went wrong."""
    bwrap = find_bwrap()
    if bwrap is None:
        return "bwrap is not installed. " + INSTALL_HINT
    argv = [*_identity_args(identity.UID_BASE - 1), bwrap, *_namespace_args()]
    argv += ["--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not start: {error}"
    if done.returncode != 0:
        return (
            f"bwrap cannot create namespaces on this machine ({done.stderr.strip()}). "
            "User namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0)."
        )
    return None


@dataclass
class Protections:
    """What this machine lets the sandbox have beyond bubblewrap's namespaces."""

    cgroup: cgroups.Hierarchy | None
    cgroup_problem: str
    seccomp: bytes | None

    def describe(self) -> list[str]:
        as_root = os.geteuid() == 0
        lines = [
            "user namespace, "
            + ("a fresh user id per sandbox" if as_root else "the grader's own user id"),
            "seccomp filter (keyrings, ptrace, mount, namespaces, memfd, ...)"
            if self.seccomp
            else f"no seccomp filter (no syscall table for {os.uname().machine})",
        ]
        if self.cgroup:
            lines.append(f"{self.cgroup.describe()}: memory, processes, fair CPU share")
        else:
            lines.append(
                f"no cgroup ({self.cgroup_problem}): memory by RLIMIT_AS and the resident-"
                "memory watchdog only (shared memory and kernel buffers not counted), "
                "processes by RLIMIT_NPROC, CPU not shared fairly"
            )
        return lines


@functools.lru_cache(maxsize=1)
def protections() -> Protections:
    hierarchy, problem = cgroups.detect()
    return Protections(hierarchy, problem, seccomp.program())


# As root: bind what must be bound but is out of an ordinary user's reach (a Python under
# /root, a grading directory in a private temporary folder) to a staging folder, in a mount
# namespace of the sandbox's own, then go on.
_BIND_AND_EXEC = (
    'while [ "$1" != -- ]; do mount --rbind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'
)


def _hidden(path: Path) -> bool:
    """Whether an ordinary user cannot reach ``path`` (some folder above it is closed)."""
    return any(not os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _staging(roots: list[Path]) -> dict[Path, Path]:
    """root -> where a user of the sandbox's can reach it, for the roots it cannot."""
    if os.geteuid() != 0:
        return {}
    folder = Path(tempfile.gettempdir()) / "autograde-staging"
    staged = {}
    for index, root in enumerate(r for r in roots if _hidden(r)):
        (folder / str(index)).mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        staged[root] = folder / str(index)
    return staged


def _identity_args(uid: int, staged: dict[Path, Path] | None = None) -> list[str]:
    """As root: become ``uid`` before bwrap, which then builds its user namespace unprivileged
    (a root bwrap would run the student's processes as real root of the host's kernel)."""
    if os.geteuid() != 0:
        return []
    prefix = []
    if staged:
        prefix = [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private"]
        prefix += ["--", "/bin/sh", "-c", _BIND_AND_EXEC, "sh"]
        for root, stage in staged.items():
            prefix += [str(root), str(stage)]
        prefix.append("--")
    setpriv = shutil.which("setpriv") or "setpriv"
    return [*prefix, setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _namespace_args() -> list[str]:
    args = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    args += ["--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    return args + ["--uid", str(identity.STUDENT_UID), "--gid", str(identity.STUDENT_UID)]


def _python_roots(python: str) -> list[Path]:
    """The directories the interpreter and its environment live in (to bind read-only)."""
    roots = {Path(sys.prefix), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix)}
    roots.add(Path(os.path.realpath(python)).parent.parent)
    usr = Path("/usr")
    return sorted(r for r in roots if r != usr and usr not in r.parents and r != Path("/"))


def bwrap_argv(config: SandboxConfig, uid: int, seccomp_fd: int | None = None) -> list[str]:
    """The full command line: the sandbox's identity, bubblewrap, its mounts, the worker."""
    roots = _python_roots(config.python)
    grading = Path(config.grading_dir)
    staged = _staging([*roots, grading])
    argv = [*_identity_args(uid, staged), find_bwrap() or "bwrap", *_namespace_args()]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives"):
        path = Path("/etc") / name
        if path.exists():
            argv += ["--ro-bind", str(path), str(path)]
    for name in ("passwd", "group"):
        argv += ["--ro-bind", str(staged.get(grading, grading) / "etc" / name), f"/etc/{name}"]
    # The writable /tmp is mounted before the interpreter's directories: a virtual environment
    # that lives under /tmp (a CI checkout, say) is then bound on top of it, not hidden by it.
    argv += ["--perms", "1777", "--size", str(config.limits.tmp_size), "--tmpfs", "/tmp"]
    made: set[Path] = {Path("/"), Path("/usr"), Path("/etc"), Path("/tmp")}
    for root in roots:
        for parent in reversed(root.parents):
            if parent not in made:
                argv += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        argv += ["--ro-bind", str(staged.get(root, root)), str(root)]
        made.add(root)
    argv += ["--ro-bind", str(staged.get(grading, grading)), "/grader"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--chdir", "/tmp", "--", config.python, "-I", "-B", "-c", BOOT]
    argv += ["--lib", "/grader", "--mplcache", "/grader/mplcache", "--scratch", "/tmp/work"]
    return argv


def worker_env(scratch: str, threads: int = 1) -> dict[str, str]:
    venv_bin = str(Path(sys.prefix) / "bin")
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": f"{scratch}/home",
        "IPYTHONDIR": f"{scratch}/ipython",
        "MPLCONFIGDIR": f"{scratch}/mpl",
        "MPLBACKEND": "Agg",
        "TMPDIR": "/tmp",
        "USER": "student",
        "LOGNAME": "student",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": "",
        "NBGRADER_EXECUTION": "autograde",  # as nbgrader sets it while autograding
    }


class WorkerProcess:
    """A running worker: the pipes to talk to it, and the means to kill everything it started."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        _adopt_orphans()
        self.uid = identity.fresh_uid() if config.sandbox else os.getuid()
        self.killed_for: str | None = None
        self.stderr_tail: deque[bytes] = deque(maxlen=64)
        self._dead = threading.Event()
        cmd_r, self.cmd_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        os.set_blocking(self.cmd_w, False)
        granted = protections() if config.sandbox else Protections(None, "no sandbox", None)
        self.group = None
        if granted.cgroup is not None:
            self.group = cgroups.Group(
                granted.cgroup, config.limits.memory, config.limits.processes
            )
        extra_fds = [seccomp.pipe_with(granted.seccomp)] if granted.seccomp else []
        if config.sandbox:
            argv = bwrap_argv(config, self.uid, extra_fds[0] if extra_fds else None)
            env = worker_env("/tmp/work", config.threads)
            cwd = "/"
        else:
            self.scratch = _scratch_dir()
            argv = [config.python, "-I", "-B", "-c", BOOT, "--lib", str(config.grading_dir)]
            argv += ["--mplcache", str(Path(config.grading_dir) / "mplcache")]
            argv += ["--scratch", self.scratch]
            env = worker_env(self.scratch, config.threads)
            cwd = self.scratch
        limits = config.limits
        nproc = limits.processes
        if os.geteuid() != 0 or not config.sandbox:  # the limit counts all of our processes
            nproc += _count_own_processes()

        rlimits = {
            "as": limits.memory,
            "cpu": limits.cpu_seconds,
            "nproc": nproc,
            "nofile": limits.open_files,
            "fsize": limits.file_size,
            "core": 0,
        }
        argv += ["--cmd-fd", str(cmd_r), "--reply-fd", str(reply_w)]
        argv += ["--threads", str(config.threads)]
        join = self.group.join_fds() if self.group else []

        def preexec():  # in the child, before anything of the sandbox runs
            for fd in join:  # join the sandbox's cgroup: everything started later is in it
                os.write(fd, b"0")
            for name, value in rlimits.items():
                which = getattr(resource, f"RLIMIT_{name.upper()}")
                resource.setrlimit(which, (value, value))

        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            pass_fds=(cmd_r, reply_w, *extra_fds),
            preexec_fn=preexec,  # noqa: PLW1509 - only os.write and setrlimit, no locks
            start_new_session=True,
        )
        for fd in (cmd_r, reply_w, *extra_fds, *join):
            os.close(fd)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        threading.Thread(target=self._watch_memory, daemon=True).start()

    def _drain_stderr(self) -> None:
        stream = self.process.stderr
        while chunk := stream.read1(4096) if stream else b"":
            self.stderr_tail.append(chunk)

    def stderr_text(self) -> str:
        return b"".join(self.stderr_tail).decode(errors="replace")[-4000:]

    def _watch_memory(self) -> None:
        while not self._dead.wait(0.2):
            pids = _descendants(self.process.pid)
            total = sum(_memory(pid) for pid in pids)
            if total > self.config.limits.memory:
                self.kill(f"memory limit: {total >> 20} MiB resident")
                return

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, seconds: float) -> int | None:
        """The exit status, waiting up to ``seconds`` for it; None if still running."""
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, reason: str | None = None) -> None:
        """Kill the sandbox and everything in it; wait until it is gone."""
        if reason and self.killed_for is None:
            self.killed_for = reason
        self._dead.set()
        # Listed before anything is killed: a killed process's children go to the subreaper
        # (us) at once, and are no longer anyone's descendants, but must still be reaped.
        pids = _descendants(self.process.pid)
        if self.group is not None:
            self.group.kill()
        for action in (
            lambda: os.killpg(self.process.pid, signal.SIGKILL),
            *(lambda p=p: os.kill(p, signal.SIGKILL) for p in pids),
        ):
            try:
                action()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel always obliges
            pass
        _reap(pids, self.uid if os.geteuid() == 0 and self.config.sandbox else None)
        for fd in (self.cmd_w, self.reply_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.cmd_w = self.reply_r = -1
        if self.group is not None:
            self.group.remove()
        if not self.config.sandbox:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def exit_description(self) -> str:
        code = self.process.poll()
        if self.killed_for:
            return self.killed_for
        if code is None:
            return "the worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the Python process was killed by {name}"
        return f"the Python process exited with status {code}"


def _scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="autograde-scratch-")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        after = stat.rsplit(b")", 1)[-1].split()
        if len(after) > 2:
            children.setdefault(int(after[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child in children.get(current, []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _adopt_orphans() -> None:
    """Make this process a child subreaper: a sandbox process whose parent dies first is handed
    to us, not to the machine's init, so ``_reap`` can wait for it to be gone for good."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap(pids: list[int], uid: int | None = None, seconds: float = 30) -> None:
    """Wait until each of the killed ``pids`` is gone from the process table, reaping the ones
    handed to us. Without this, a killed sandbox's pid-namespace init lingers as a zombie
    under its sandbox uid until the machine's init gets round to it. ``uid``: the sandbox's
    own (as root, never shared), whose every process is waited for too, so that one the list
    missed (its parent had died, handing it to us, before the list was made) is not left
    behind. ``seconds`` only bounds a kernel that never lets a killed process go."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        of_uid = _processes_of(uid) if uid is not None else set()
        left = [pid for pid in set(pids) | of_uid if not _gone(pid)]
        if not left:
            return
        for pid in of_uid.intersection(left):  # anything of the sandbox's that still runs
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has left the process table; reaps it if it is a dead child of ours."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not ours: gone, or a zombie whose parent is dying
        return not os.path.exists(f"/proc/{pid}")


def _processes_of(uid: int) -> set[int]:
    """Every process (zombies included) that runs as ``uid``."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                found.add(int(entry))
        except OSError:
            pass
    return found


def _memory(pid: int) -> int:
    """The process's proportional share of resident memory (shared pages split among their
    users), so that forked children sharing the parent's torch are not counted many times."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _rss(pid)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _count_own_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return count
