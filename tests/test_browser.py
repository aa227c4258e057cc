"""The book in a real browser (Debian's chromium, driven by Playwright; nothing downloaded).

Each page: the expected title, MathJax actually typeset, every figure loaded, no console
error, no request leaving localhost. Screenshots go to test-artifacts/screenshots/.
"""

import functools
import http.server
import shutil
import threading

import pytest

from tools.chapters import ROOT, load_all

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"
PAGES = [("index.html", "Attention, step by step")] + [
    (f"book/{ch.name}.html", ch.title) for ch in load_all()
]


@pytest.fixture(scope="module")
def site(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=built_book)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield browser
        browser.close()


@pytest.mark.parametrize("path, title", PAGES, ids=[p for p, _ in PAGES])
def test_page_renders(browser, site, path, title):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def only_localhost(route):
        if route.request.url.startswith(site):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_localhost)
    page.goto(f"{site}/{path}", wait_until="networkidle")
    assert title in page.title()
    page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=20000)
    assert page.locator("mjx-container").count() > 0, "MathJax did not typeset any math"
    assert page.locator("mjx-merror").count() == 0, "MathJax reported a TeX error"
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.src, i.complete && i.naturalWidth > 0])"
    )
    assert all(ok for _, ok in images), f"figures that did not load: {images}"
    if path.startswith("book/"):
        assert images, "a chapter page without figures"
        assert page.get_by_text("YOUR CODE HERE").count() > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{path.replace('/', '_')}.png", full_page=True)
    assert not outside, f"requests left localhost: {outside}"
    assert not errors, f"console errors: {errors}"
    page.close()
