"""Generate every derived file from the instructor sources in solutions/.

    solutions/NN-slug.md -> autograde/source/NN-slug/NN-slug.ipynb    nbgrader source
                         -> autograde/release/NN-slug/NN-slug.ipynb   generate_assignment
                         -> chapters/NN-slug.ipynb                    student edition (= release)
                         -> course_lib/MODULE.py                      cells with :export: MODULE
                         -> _toc.yml                                  the book's chapters

Usage: ``python -m tools.sync`` writes them; ``python -m tools.sync --check`` lists stale or
missing files and exits 1 (the test suite runs the same comparison).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from tools.chapters import OUR_KEYS, OUR_TAGS, ROOT, Chapter, load_all, strip_markers

AUTOGRADE = ROOT / "autograde"
BIN = Path(sys.executable).parent


def venv_env() -> dict[str, str]:
    """This environment with the venv's scripts first on PATH (nbgrader calls `alembic`)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# The docstring of each generated course_lib module: what the concept is and where it is taught.
MODULE_DOCS = {
    "attention": "Dot-product attention: similarity scores, softmax, soft lookup,\n"
    "scaled dot-product attention and its masks.",
    "seq2seq": "RNN encoder-decoder with attention: additive attention, the attention\n"
    "decoder's step, greedy decoding and the padding-aware sequence loss.",
    "multihead": "Self-attention and multi-head attention: learned query/key/value projections,\n"
    "splitting and merging heads, the output projection, and the fused attention path.",
    "positional": "Token embeddings and positional encodings: the scaled embedding lookup, the\n"
    "sinusoidal table of Vaswani et al. (2017) and the module that adds it to a sequence.",
    "transformer": "The Transformer encoder-decoder: LayerNorm, the position-wise feed-forward\n"
    "network, encoder and decoder layers (post-LN and pre-LN) and the model behind chapter 3's\n"
    "encode/step interface.",
    "scaling": "Scaling training up: the warm-up learning-rate schedules, one optimizer step with\n"
    "mixed precision, gradient scaling and accumulation over micro-batches, and each\n"
    "data-parallel rank's shard of an epoch.",
    "decoding": "Fast decoding: the key-value cache, self-attention for one new position against\n"
    "it, and chapter 6's Transformer behind the encode/step interface decoding one position per\n"
    "step, with the same tokens as full decoding.",
    "efficient": "Memory-efficient attention: the online softmax over chunks of keys and\n"
    "attention computed chunk by chunk without forming the L x S score matrix.",
}


def nbgrader_source(ch: Chapter) -> nbformat.NotebookNode:
    """The chapter as an nbgrader source notebook: our cell options become nbgrader metadata."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, src in enumerate(ch.notebook.cells):
        cell = copy.deepcopy(src)
        meta = cell.metadata
        tags = [t for t in meta.get("tags", []) if t not in OUR_TAGS]
        gid = meta.get("grade_id")
        grading = {"schema_version": 3, "task": False, "grade_id": gid}
        if "solution" in meta.get("tags", []):
            grading.update(solution=True, grade=False, locked=False)
        elif "tests" in meta.get("tags", []):
            grading.update(solution=False, grade=True, locked=True, points=meta["points"])
        elif "export" in meta:  # given library code: students read it, nbgrader restores it
            grading.update(solution=False, grade=False, locked=True, grade_id=f"given-{i:02d}")
        else:
            grading = None
        for key in OUR_KEYS + ("tags",):
            meta.pop(key, None)
        if tags:
            meta["tags"] = tags
        if grading is not None:
            meta["nbgrader"] = grading
        cell.id = grading["grade_id"] if grading else f"cell-{i:02d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        nb.cells.append(cell)
    return nb


def nbgrader_release(sources: dict[str, nbformat.NotebookNode]) -> dict[str, str]:
    """Run nbgrader's own generate_assignment on the sources, in a scratch course directory."""
    released = {}
    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp)
        shutil.copy(AUTOGRADE / "nbgrader_config.py", course)
        for name, nb in sources.items():
            folder = course / "source" / name
            folder.mkdir(parents=True)
            nbformat.write(nb, folder / f"{name}.ipynb")
        for name in sources:
            subprocess.run(
                [
                    BIN / "nbgrader",
                    "generate_assignment",
                    name,
                    "--force",
                    "--log-level=WARN",
                    f"--CourseDirectory.root={course}",
                    f"--db=sqlite:///{course}/gradebook.db",
                ],
                cwd=course,
                check=True,
                env=venv_env(),
            )
            released[name] = (course / "release" / name / f"{name}.ipynb").read_text()
    return released


def library_module(module: str, parts: list[tuple[Chapter, str]]) -> str:
    """A course_lib module from the exported cells of the chapters, imports hoisted to the top."""
    imports: list[str] = []
    bodies: list[str] = []
    previous = None
    for ch, source in parts:
        lines = strip_markers(source).splitlines()
        while lines and (lines[0].startswith(("import ", "from ")) or not lines[0].strip()):
            line = lines.pop(0)
            own = line.startswith(f"from course_lib.{module} import")
            if line.strip() and not own and line not in imports:
                imports.append(line)
        if lines:
            banner = f"# --- from solutions/{ch.name}.md\n" if ch is not previous else ""
            bodies.append(banner + "\n".join(lines).strip() + "\n")
            previous = ch
    chapters = sorted({f"solutions/{ch.name}.md" for ch, _ in parts})
    sources = "".join(f"    {path}\n" for path in chapters)
    header = (
        f'"""{MODULE_DOCS[module]}\n\n'
        f"Generated by `make sync` from\n{sources}"
        'Do not edit this file: edit the sources and run `make sync`.\n"""\n\n'
    )
    text = header + "\n".join(imports) + "\n\n\n" + "\n\n".join(bodies)
    return _ruff(text, module)


def _ruff(text: str, module: str) -> str:
    """Sort imports and format the way `ruff check`/`ruff format` expect of committed code."""
    name = f"course_lib/{module}.py"
    fix = [
        BIN / "ruff",
        "check",
        "--quiet",
        "--fix-only",
        "--select",
        "I",
        "--stdin-filename",
        name,
    ]
    text = subprocess.run(fix, input=text, text=True, capture_output=True, check=True).stdout
    fmt = [BIN / "ruff", "format", "--quiet", "--stdin-filename", name]
    return subprocess.run(fmt, input=text, text=True, capture_output=True, check=True).stdout


def generate() -> dict[Path, str]:
    """Every generated file (path relative to the repository root) and its content."""
    chapters = load_all()
    sources = {ch.name: nbgrader_source(ch) for ch in chapters}
    out: dict[Path, str] = {}
    for name, nb in sources.items():
        out[Path("autograde/source") / name / f"{name}.ipynb"] = nbformat.writes(nb) + "\n"
    for name, text in nbgrader_release(sources).items():
        out[Path("autograde/release") / name / f"{name}.ipynb"] = text
        out[Path("chapters") / f"{name}.ipynb"] = text
    modules: dict[str, list[tuple[Chapter, str]]] = {}
    for ch in chapters:
        for module, cell in ch.exports():
            modules.setdefault(module, []).append((ch, cell.source))
    for module, parts in modules.items():
        out[Path("course_lib") / f"{module}.py"] = library_module(module, parts)
    out[Path("_toc.yml")] = table_of_contents(chapters)
    return out


def table_of_contents(chapters: list[Chapter]) -> str:
    """Jupyter Book's _toc.yml: the introduction, then every chapter in order."""
    lines = [
        "# Generated by `make sync` from the sources in solutions/. Chapter pages are the",
        "# student notebooks with a correct solution's outputs, written to book/ by tools/book.py.",
        "format: jb-book",
        "root: intro",
        "chapters:",
    ]
    lines += [f"  - file: book/{ch.name}" for ch in chapters]
    return "\n".join(lines) + "\n"


def generated_dirs() -> list[Path]:
    """Folders whose notebooks all come from this script: anything else there is stale."""
    return [Path("chapters"), Path("autograde/source"), Path("autograde/release")]


def stale(files: dict[Path, str]) -> list[str]:
    """What differs between ``files`` and the working tree."""
    problems = []
    for rel, text in files.items():
        path = ROOT / rel
        if not path.exists():
            problems.append(f"missing: {rel}")
        elif path.read_text() != text:
            problems.append(f"stale: {rel}")
    for folder in generated_dirs():
        for path in (ROOT / folder).rglob("*.ipynb"):
            if path.relative_to(ROOT) not in files:
                problems.append(f"left over: {path.relative_to(ROOT)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    files = generate()
    if args.check:
        problems = stale(files)
        for p in problems:
            print(p)
        if problems:
            print("Generated files are out of date: run `make sync`.")
        return 1 if problems else 0
    for folder in generated_dirs():
        for path in (ROOT / folder).rglob("*.ipynb"):
            if path.relative_to(ROOT) not in files:
                path.unlink()
    for rel, text in files.items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
