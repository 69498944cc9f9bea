"""reports/index.html and a notebook page: well-formed HTML that leads with the results and embeds
its figures, so the pages open anywhere without the files beside them."""
from __future__ import annotations

import base64
import shutil
from html.parser import HTMLParser

import nbformat

from sslkit.ablation import fixture_runs
from sslkit.book import render_html
from sslkit.report_index import build_index

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
PNG = b"\x89PNG\r\n\x1a\n"


class _Checker(HTMLParser):
    """Records every unclosed or misnested element, the headings in order and the embedded images."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.headings, self.images, self._h = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        if tag in ("h1", "h2"):
            self._h = ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()
        if tag in ("h1", "h2") and self._h is not None:
            self.headings.append(self._h.strip())
            self._h = None

    def handle_data(self, data):
        if self._h is not None:
            self._h += data


def _check(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    return checker


def _pngs(checker: _Checker) -> list[bytes]:
    prefix = "data:image/png;base64,"
    return [base64.b64decode(src[len(prefix):]) for src in checker.images if src.startswith(prefix)]


def test_index_leads_with_the_results_table_and_figure(tmp_path):
    shutil.copytree(fixture_runs(), tmp_path / "runs")
    page = build_index(tmp_path).read_text(encoding="utf-8")
    checker = _check(page)
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert checker.headings[:3] == ["sslkit reports", "Results", "Notebooks"]
    results = page[page.index("<h2>Results</h2>"):page.index("<h2>Notebooks</h2>")]
    assert "<table>" in results and "±" in results  # mean ± std over seeds
    figures = _pngs(checker)
    assert figures and all(png.startswith(PNG) for png in figures)


def test_a_rendered_notebook_keeps_its_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": "<Figure>"})])])
    executed = tmp_path / "01_x.ipynb"
    nbformat.write(nb, executed)
    page = render_html(executed).read_text(encoding="utf-8")
    checker = _check(page)
    assert not checker.stack or checker.stack == ["html"], checker.stack
    assert _pngs(checker) and _pngs(checker)[0] == buf.getvalue()
