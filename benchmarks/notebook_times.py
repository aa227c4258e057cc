"""Wall time of executing each chapter's reference notebook top to bottom, as a student would.

Run: .venv/bin/python -m benchmarks.notebook_times [--grading]

``--grading`` sets NBGRADER_EXECUTION as nbgrader autograde does (chapters skip long training).
The first line is a baseline measured in the same run: a kernel that only imports torch, so
each chapter's time can be read as kernel start-up plus its own work.
"""

from __future__ import annotations

import argparse
import os
import time

import nbformat
from nbclient import NotebookClient

from tools.chapters import ROOT, load_all


def execute(nb: nbformat.NotebookNode) -> float:
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grading", action="store_true", help="set NBGRADER_EXECUTION")
    args = parser.parse_args()
    if args.grading:
        os.environ["NBGRADER_EXECUTION"] = "autograde"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "autograde"), str(ROOT)])
    os.environ.setdefault("MPLBACKEND", "Agg")
    baseline = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import torch")]))
    print(f"{'baseline (kernel + import torch)':45s} {baseline:6.1f} s")
    for ch in load_all():
        path = ROOT / "autograde" / "source" / ch.name / f"{ch.name}.ipynb"
        seconds = execute(nbformat.read(path, as_version=4))
        print(f"{ch.name:45s} {seconds:6.1f} s   ({seconds / baseline:4.1f}x baseline)")


if __name__ == "__main__":
    main()
