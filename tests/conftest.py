import sys
from pathlib import Path

import matplotlib

ROOT = Path(__file__).resolve().parent.parent
# tools/ (the sync pipeline) and autograde/hidden_checks are imported by the tests.
for path in (ROOT, ROOT / "autograde"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

matplotlib.use("Agg")
