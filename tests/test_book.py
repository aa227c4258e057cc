"""The built book: no solution or hidden check leaks, no traceback, offline math, downloads."""

import html
import re

import pytest
from bs4 import BeautifulSoup

from tools.chapters import BEGIN_SOLUTION, ROOT, load_all

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]

CHAPTERS = load_all()


def page_text(path) -> str:
    """What a reader (or a search engine) can see in a built file, whitespace collapsed."""
    raw = path.read_text(errors="ignore")
    text = BeautifulSoup(raw, "html.parser").get_text(" ") if path.suffix == ".html" else raw
    text = html.unescape(text).replace("\\n", "\n").replace('\\"', '"')
    return re.sub(r"[ \t]+", " ", text)


def squash(line: str) -> str:
    return re.sub(r"\s+", "", line)


def test_no_solution_or_hidden_check_line_anywhere(built_book):
    public = set().union(*(ch.public_lines() for ch in CHAPTERS))
    secrets = {squash(line): (ch.name, line) for ch in CHAPTERS for line in ch.secret_lines(public)}
    assert secrets
    for path in built_book.rglob("*"):
        if path.is_file() and path.suffix in {".html", ".js", ".ipynb", ".txt", ".json"}:
            if "_static" in path.parts and path.suffix == ".js":
                continue  # theme and MathJax code
            text = squash(page_text(path))
            for squashed, (chapter, line) in secrets.items():
                assert squashed not in text, f"{path} leaks {chapter}: {line!r}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_chapter_page_shows_stubs_outputs_and_no_traceback(built_book, chapter):
    page = built_book / "book" / f"{chapter.name}.html"
    soup = BeautifulSoup(page.read_text(), "html.parser")
    text = soup.get_text(" ")
    assert chapter.title in text
    regions = sum(c.source.count(BEGIN_SOLUTION) for c in chapter.cells("solution"))
    assert text.count("YOUR CODE HERE") == regions  # one stub per solution region
    assert text.count("All ") and "checks passed" in text  # the visible checks ran and passed
    for marker in ("Traceback", "CheckFailed", "Error:"):
        assert marker not in text, f"{page.name} shows {marker!r}"
    assert not soup.select(".output.traceback, .output.error, .stderr"), "error output shown"
    assert soup.select("img"), "no figure on the page"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_chapter_page_offers_the_student_notebook(built_book, chapter):
    page = (built_book / "book" / f"{chapter.name}.html").read_text()
    links = re.findall(rf'href="(\.\./_downloads/[0-9a-f]+/{chapter.name}\.ipynb)"', page)
    assert links, "no download link to the student notebook"
    served = (built_book / "book" / links[0]).resolve()
    assert served.read_bytes() == (ROOT / "chapters" / f"{chapter.name}.ipynb").read_bytes()


def test_math_is_served_from_the_build(built_book):
    for page in built_book.rglob("*.html"):
        for script in BeautifulSoup(page.read_text(), "html.parser").find_all("script"):
            src = script.get("src") or ""
            assert not src.startswith(("http:", "https:", "//")), f"{page} loads {src}"
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()
