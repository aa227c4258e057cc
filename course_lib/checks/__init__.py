"""Visible checks: what a student's notebook runs to get specific feedback.

Each ``check_*`` function takes the student's function, runs it on small random inputs and
compares against an oracle (PyTorch's own implementation where one exists) and the properties
the chapter teaches. A failure raises :class:`CheckFailed` whose message says what was expected
and names the likely bug. The hidden checks in ``autograde/hidden_checks`` reuse the same
probes with other sizes.
"""

from course_lib.checks.core import CheckFailed, passed

__all__ = ["CheckFailed", "passed"]
