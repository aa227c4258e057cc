"""Sphinx extension: keep the book free of code that reaches for the internet.

Jupyter Book always loads sphinx-thebe, which fetches its runtime from unpkg.com when used and,
with sphinx-book-theme, declares THEBE_JS_URL twice on every page (a console error). The course
has no live kernels on its pages, so this removes thebe's scripts and styles from each page.
"""


def _drop_thebe(app, pagename, templatename, context, doctree):
    def is_thebe(asset) -> bool:
        text = f"{getattr(asset, 'filename', '') or asset} {getattr(asset, 'attributes', {})}"
        return "thebe" in text.lower()

    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if not is_thebe(asset)]


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
