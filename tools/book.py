"""Build the HTML book: the student notebooks, shown with a correct solution's outputs.

For each chapter, ``book/NN-slug.ipynb`` (git-ignored) is the student edition from chapters/
plus cells that Jupyter Book removes from the page:

* after each exercise, ``from course_lib.MODULE import ...`` rebinds the stub to the reference,
  so the checks and figures below it show what success looks like while the page shows
  exactly the stub students receive;
* at the top, a digest of course_lib, so that changing the library re-executes the pages
  (jupyter-cache keys on cell sources only).

A link to download the student notebook follows the title. Then ``jupyter-book build`` runs
offline with warnings as errors; execution is cached in _build/.jupyter_cache.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import nbformat

from tools.chapters import ROOT, defined_names, load_all
from tools.sync import BIN, venv_env

BOOK = ROOT / "book"
REMOVED = {"tags": ["remove-cell"]}


def library_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "course_lib").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def book_edition(name: str, modules: dict[str, str], digest: str) -> nbformat.NotebookNode:
    """The student notebook ``name`` with the reference bound after each exercise."""
    nb = nbformat.read(ROOT / "chapters" / f"{name}.ipynb", as_version=4)
    cells = [nbformat.v4.new_code_cell(f"# course_lib {digest}", metadata=dict(REMOVED))]
    for i, cell in enumerate(nb.cells):
        cells.append(cell)
        if i == 0:
            cells.append(
                nbformat.v4.new_markdown_cell(
                    f"**Student notebook:** {{download}}`{name}.ipynb <../chapters/{name}.ipynb>`"
                    " — download it, fill in each `YOUR CODE HERE`, and run it top to bottom. "
                    "This page shows the exercises exactly as you receive them, with the "
                    "outputs a correct solution produces."
                )
            )
        if cell.metadata.get("nbgrader", {}).get("solution"):
            gid = cell.metadata["nbgrader"]["grade_id"]
            module, names = modules[gid]
            source = f"from course_lib.{module} import {', '.join(names)}  # the reference"
            cells.append(nbformat.v4.new_code_cell(source, metadata=dict(REMOVED)))
    for j, cell in enumerate(cells):
        cell.id = f"book-{j:03d}"
    nb.cells = cells
    return nb


def write_editions() -> None:
    digest = library_digest()
    BOOK.mkdir(exist_ok=True)
    for ch in load_all():
        modules = {
            c.metadata["grade_id"]: (c.metadata["export"], defined_names(c.source))
            for c in ch.cells("solution")
        }
        text = nbformat.writes(book_edition(ch.name, modules, digest))
        path = BOOK / f"{ch.name}.ipynb"
        if not path.exists() or path.read_text() != text:  # unchanged files keep Sphinx fast
            path.write_text(text)


def main() -> int:
    write_editions()
    cmd = [BIN / "jupyter-book", "build", str(ROOT), "--warningiserror", "--keep-going"]
    return subprocess.run(cmd, cwd=ROOT, env=venv_env()).returncode


if __name__ == "__main__":
    sys.exit(main())
