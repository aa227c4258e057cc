"""A fresh user id for every sandbox, never handed out twice.

Kernel state is kept per user id: process counts (RLIMIT_NPROC), the user keyring, and any
process left behind. A uid reused by the next sandbox would inherit all of it, so when the
grader runs as root each sandbox gets the next uid of a machine-wide counter (a root-only file
under the temporary directory, updated under a lock, so concurrent runs never share one).
The counter covers 2^30 ids before it wraps; it starts again after a reboot (when the
temporary directory is cleared), which also clears everything the kernel kept per uid.
As an ordinary user the sandbox keeps that user's id (mapped to a user namespace).
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path

UID_BASE = 2_000_000
UID_SPAN = 1 << 30
STUDENT_UID = 1000  # the id the student's code sees inside its user namespace


def _counter() -> Path:
    folder = Path(tempfile.gettempdir()) / "autograde-sandbox-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"{folder} must be a directory owned by root, mode 0700")
    return folder / "next"


def fresh_uid() -> int:
    """A uid no sandbox has had (as root), else this process's own."""
    if os.geteuid() != 0:
        return os.getuid()
    fd = os.open(_counter(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        current = int(text) if text.isdigit() else 0
        os.ftruncate(fd, 0)
        os.pwrite(fd, str((current + 1) % UID_SPAN).encode(), 0)
        return UID_BASE + current
    finally:
        os.close(fd)
