"""Reading a student's submission folder, which the student controls.

Everything under ``submitted/STUDENT/ASSIGNMENT`` is the student's: plain ``nbgrader
collect`` copies the exchange's ``inbound/`` folder and follows a symbolic link dropped there,
and a folder may hold links, devices, sparse files of many GiB, names that are not UTF-8. So
the student id must be a plain name; the student's folder, the assignment folder and each file
are opened without following links (``O_NOFOLLOW``, relative to the folder above, so a path
never leaves ``submitted/STUDENT/ASSIGNMENT``); only regular files are read, their size is
checked before reading and bounded while reading; ``timestamp.txt`` must parse. What fails
costs this student alone: the submission (or one notebook of it) is ``invalid``, with the
reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .notebooks import MAX_NOTEBOOK_BYTES

MAX_TIMESTAMP_BYTES = 1024
STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


class Unreadable(Exception):
    """A submitted file or folder that is not graded (the message says why)."""


def student_id_problem(name: str) -> str | None:
    """Why ``name`` is not a student id we grade (None if it is one)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the student folder's name is not valid UTF-8"
    if not STUDENT_ID.fullmatch(name):
        return (
            "the student folder's name is not a plain student id "
            "(letters, digits and . _ @ + -, at most 128)"
        )
    return None


def printable(name: str) -> str:
    """A student folder's name as it can be shown (escapes for what is not plain text)."""
    return name if student_id_problem(name) is None else ascii(name)


@dataclass
class Submission:
    student: str
    notebooks: dict[str, bytes] = field(default_factory=dict)  # name -> content
    problems: dict[str, str] = field(default_factory=dict)  # name -> why it is not graded
    timestamp: str | None = None  # timestamp.txt, validated
    invalid: str | None = None  # why nothing of it is graded

    def digest(self) -> str:
        """What identifies this submission's content (the same bytes, the same digest)."""
        h = hashlib.sha256()
        for name in sorted(self.notebooks):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.notebooks[name]).digest())
        for name in sorted(self.problems):
            h.update(f"{name}\0{self.problems[name]}".encode(errors="replace"))
        h.update(f"{self.timestamp}\0{self.invalid}".encode(errors="replace"))
        return h.hexdigest()


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as error:
        raise Unreadable(_why(name, error, "folder")) from None


def _why(name: str, error: OSError, what: str) -> str:
    if error.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{name} is a symbolic link or not a {what}: only plain {what}s are graded"
    if error.errno == errno.ENOENT:
        return f"no {name} was submitted"
    return f"{name} cannot be read ({error.strerror})"


def read_file(name: str, dir_fd: int, limit: int) -> bytes:
    """A regular file, not a link, of at most ``limit`` bytes, read in chunks."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO must not block the grader
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as error:
        raise Unreadable(_why(name, error, "file")) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"{name} is not a regular file")
        if info.st_size > limit:
            raise Unreadable(f"{name} is larger than {limit >> 20 or limit} {_unit(limit)}")
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while being read
                raise Unreadable(f"{name} is larger than {limit >> 20 or limit} {_unit(limit)}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _unit(limit: int) -> str:
    return "MiB" if limit >> 20 else "bytes"


def read(step_dir: Path, student: str, assignment: str, names: list[str], parse_time) -> Submission:
    """The submission of ``student`` in ``step_dir`` (the course's ``submitted`` folder).

    ``names`` are the notebooks to read (``NAME.ipynb``); ``parse_time`` parses the text of
    ``timestamp.txt`` (nbgrader's ``parse_utc``) and raises on nonsense.
    """
    found = Submission(student)
    problem = student_id_problem(student)
    if problem:
        found.invalid = problem
        return found
    fds = []
    try:
        fds.append(os.open(step_dir, os.O_RDONLY | os.O_DIRECTORY))  # the instructor's
        fds.append(_open_dir(student, fds[-1]))
        fds.append(_open_dir(assignment, fds[-1]))
        folder = fds[-1]
        for name in names:
            try:
                found.notebooks[name] = read_file(f"{name}.ipynb", folder, MAX_NOTEBOOK_BYTES)
            except Unreadable as why:
                found.problems[name] = str(why)
        try:
            text = read_file("timestamp.txt", folder, MAX_TIMESTAMP_BYTES)
        except Unreadable as why:
            if "no timestamp.txt" not in str(why):
                raise
        else:
            found.timestamp = _timestamp(text, parse_time)
    except Unreadable as why:
        found.invalid = str(why)
    except OSError as error:
        found.invalid = f"the submission cannot be read ({error.strerror})"
    finally:
        for fd in fds:
            os.close(fd)
    return found


def _timestamp(raw: bytes, parse_time) -> str | None:
    try:
        text = raw.decode("utf-8").strip()
        if not text:
            return None
        parse_time(text)
    except Exception:  # noqa: BLE001 - any failure to parse means the same
        raise Unreadable("timestamp.txt is not a date and time nbgrader can read") from None
    return text


def students(step_dir: Path, assignment: str) -> list[str]:
    """Every folder name under ``step_dir`` that has an entry ``assignment`` (links and
    bad names included: they are reported, not silently skipped)."""
    try:
        entries = sorted(os.listdir(step_dir))
    except OSError:
        return []
    return [name for name in entries if os.path.lexists(step_dir / name / assignment)]
