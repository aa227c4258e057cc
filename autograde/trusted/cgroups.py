"""A control group per sandbox: the kernel's own accounting of memory, processes and CPU.

RLIMIT_AS and the resident-memory watchdog see only what is mapped into a process; a cgroup
charges everything the sandbox's processes allocate, shared memory (memfd, /dev/shm, the
tmpfs /tmp) and kernel buffers (pipes) included, and the kernel's OOM killer stops it at the
limit. ``pids.max`` bounds processes whatever user or session they run in, the CPU controller
gives every sandbox the same share of the machine however many processes it spins, and the
group lists every process of the sandbox, so killing it leaves nothing behind.

Both hierarchies are supported: cgroup v2 (one tree, controllers enabled in the parent's
``cgroup.subtree_control``) and v1 (one tree per controller, as on this project's CI).
:func:`detect` says which one can be used here and, when neither can (not root, a read-only
``/sys/fs/cgroup``, controllers missing), why: the sandbox then keeps only its rlimits and the
watchdog, and the ``grade`` command says so. ``AUTOGRADE_CGROUPS=off`` forces that fallback
(the tests use it); ``AUTOGRADE_CGROUP_ROOT`` points detection at another mount (a fake tree in
the tests).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
_COUNTER = itertools.count()


@dataclass
class Hierarchy:
    """Where this process may create sandboxes' groups: one folder (v2) or one per controller
    (v1), each the group this process is in."""

    version: int
    parents: dict[str, Path]  # controller -> the folder new groups go in ("unified" for v2)

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(CONTROLLERS)})"


def _root() -> Path:
    return Path(os.environ.get("AUTOGRADE_CGROUP_ROOT", "/sys/fs/cgroup"))


def _own_groups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    groups = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            groups[name] = path
    return groups


def _writable(folder: Path) -> bool:
    probe = folder / f"autograde-probe-{os.getpid()}-{next(_COUNTER)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


def detect() -> tuple[Hierarchy | None, str]:
    """The hierarchy to use, or None and the reason there is none."""
    if os.environ.get("AUTOGRADE_CGROUPS") == "off":
        return None, "cgroups turned off (AUTOGRADE_CGROUPS=off)"
    root = _root()
    try:
        groups = _own_groups()
    except (OSError, ValueError):
        return None, "/proc/self/cgroup is unreadable"
    # cgroup v2: a pure v2 mount, or the "unified" one of a hybrid system, with controllers.
    for mount in (root, root / "unified"):
        available = (mount / "cgroup.controllers").exists() and set(
            (mount / "cgroup.controllers").read_text().split()
        )
        if available and set(CONTROLLERS) <= available:
            parent = mount / groups.get("", "/").lstrip("/")
            try:
                control = (parent / "cgroup.subtree_control").read_text().split()
                missing = [c for c in CONTROLLERS if c not in control]
                if missing:
                    (parent / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in missing)
                    )
            except OSError as error:
                return None, f"cgroup v2 controllers cannot be enabled in {parent} ({error})"
            if _writable(parent):
                return Hierarchy(2, dict.fromkeys(CONTROLLERS, parent)), ""
            return None, f"cgroup v2 group {parent} is not writable"
    # cgroup v1: one mount per controller.
    parents = {}
    for name in CONTROLLERS:
        parent = root / name / groups.get(name, "/").lstrip("/")
        if not (parent / "cgroup.procs").exists():
            return None, f"no cgroup v1 {name} controller mounted at {root / name}"
        if not _writable(parent):
            return None, f"cgroup v1 {name} group {parent} is not writable (run as root)"
        parents[name] = parent
    return Hierarchy(1, parents), ""


class Group:
    """One sandbox's group (a folder per controller in v1): limits set, ready to be joined."""

    def __init__(self, hierarchy: Hierarchy, memory: int, processes: int):
        self.hierarchy = hierarchy
        name = f"autograde-{os.getpid()}-{next(_COUNTER)}"
        self.folders = sorted({p / name for p in hierarchy.parents.values()})
        for folder in self.folders:
            folder.mkdir()
        try:
            self._limit(memory, processes)
        except OSError:
            self.remove()
            raise

    def _folder(self, controller: str) -> Path:
        return self.hierarchy.parents[controller] / self.folders[0].name

    def _limit(self, memory: int, processes: int) -> None:
        memory_dir, pids_dir, cpu_dir = (self._folder(c) for c in CONTROLLERS)
        if self.hierarchy.version == 2:
            (memory_dir / "memory.max").write_text(str(memory))
            swap = memory_dir / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            (cpu_dir / "cpu.weight").write_text("100")  # the same share for every sandbox
        else:
            (memory_dir / "memory.limit_in_bytes").write_text(str(memory))
            swap = memory_dir / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(memory))
            (cpu_dir / "cpu.shares").write_text("1024")
        (pids_dir / "pids.max").write_text(str(processes))

    def join_fds(self) -> list[int]:
        """Open ``cgroup.procs`` of each folder: a child writes "0" to them to join."""
        flags = os.O_WRONLY | os.O_CLOEXEC
        return [os.open(folder / "cgroup.procs", flags) for folder in self.folders]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for folder in self.folders:
            try:
                found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return found

    def kill(self, deadline: float = 10.0) -> None:
        """Kill every process in the group until none is left (a fork racing the kill is
        caught on the next round: the group holds every descendant)."""
        kill_file = self.folders[0] / "cgroup.kill"
        if self.hierarchy.version == 2 and kill_file.exists():
            try:
                kill_file.write_text("1")
            except OSError:
                pass
        end = time.monotonic() + deadline
        while (pids := self.pids()) and time.monotonic() < end:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for folder in self.folders:
            for _ in range(50):  # a killed process leaves its group a moment after it dies
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
