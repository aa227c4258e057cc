"""The course's nbgrader root, and the trusted grading command (``python -m autograde``).

The folder is nbgrader's course directory (``nbgrader_config.py``, ``source/``,
``release/``, ``submitted/``, ...) and the package holding the hardened grader in
``autograde.trusted``; see ``autograde/README.md``.
"""
