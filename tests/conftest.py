import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
# tools/ (the sync pipeline) and autograde/hidden_checks are imported by the tests.
for path in (ROOT, ROOT / "autograde"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

matplotlib.use("Agg")


@pytest.fixture
def one_thread():
    """Tiny models: a second thread only waits (and, with other tests running, spins)."""
    from course_lib.checks.core import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session")
def built_book():
    """The HTML book, built with `python -m tools.book` (cached after the first build).

    A file lock keeps two test processes from building at once: jupyter-cache is not safe
    for concurrent writers.
    """
    (ROOT / "_build").mkdir(exist_ok=True)
    with FileLock(ROOT / "_build" / ".book.lock"):
        result = subprocess.run(
            [sys.executable, "-m", "tools.book"], cwd=ROOT, capture_output=True, text=True
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return ROOT / "_build" / "html"


def pytest_generate_tests(metafunc):
    """Parametrize GradingContract tests with their class's alternatives and mutants."""
    for kind in ("alternative", "mutant"):
        if kind in metafunc.fixturenames and hasattr(metafunc.cls, "cases"):
            values, ids = metafunc.cls.cases(kind)
            metafunc.parametrize(kind, values, ids=ids)
