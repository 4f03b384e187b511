"""`make docs` without quarto: tools/build_docs.py runs nbdev's processors and pandoc --mathml on a small fixture site
(tests/fixtures/docs_small) offline; and nbdev's processors pass on every notebook of nbs/, so a page that cannot be
built fails CI (issue 22 item 5)."""

import json, re, shutil, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "docs_small"
sys.path.insert(0, str(ROOT / "tools"))
import build_docs as bd  # noqa: E402


def _build(nbs, out) -> int:
    "Run build_docs on `nbs` into `out` from the repository root; its exit code."
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    try:
        return bd.main(["--nbs", str(nbs), "--out", str(out), "--workers", "2"])
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "Build the fixture site once."
    out = tmp_path_factory.mktemp("site")
    assert _build(FIXTURE, out) == 0
    return out


def _text_outside_code(page: str) -> str:
    "Visible text of a page without code, MathML (its annotation keeps the TeX), scripts and styles."
    for tag in ("pre", "code", "math", "script", "style", "nav"):
        page = re.sub(rf"<{tag}\b.*?</{tag}>", " ", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def _index(out: Path) -> list:
    js = (out / "search.js").read_text()
    return json.loads(js[js.index("= ") + 2:js.index(";\n")])


def test_every_source_has_a_page_and_the_sidebar_lists_them(site):
    # nbdev's front matter names 01_math's page math.html; Markdown files keep their name
    assert json.loads((site / ".build_docs_manifest.json").read_text()) == ["index.html", "math.html", "notes.html"]
    for name in ["index.html", "math.html", "notes.html"]:
        page = (site / name).read_text()
        nav = page[page.index('id="site-nav"'):page.index("</nav>")]
        assert re.findall(r'href="([^"#]+\.html)"', nav) == ["index.html", "index.html", "math.html", "notes.html"]
        assert f'<li class=current><a href="{name}">' in nav
    # the sections of the page, with show_doc's heading under its section
    toc = (site / "math.html").read_text().split('<nav id="TOC">')[1].split("</nav>")[0]
    assert toc.index('href="#the-field"') < toc.index('href="#scale"')


def test_maths_become_mathml_and_code_keeps_dollars(site):
    page = (site / "math.html").read_text()
    assert page.count("<math") >= 8 and page.count('display="block"') >= 2  # $$..$$ and the aligned block
    assert "\U0001d415" in page  # \mathbf{V}: upright bold V, as TeX sets it (not bold italic U+1D47D)
    assert "<msqrt>" in page and "<mfrac>" in page and "\u2016" in page and "<mtable" in page
    text = _text_outside_code(page)
    assert "$" not in text and "\\frac" not in text and "\\mathbf" not in text
    assert "cost = $x$" in page and "&#39;$$not maths$$&#39;" in page  # `$` in code is left alone
    idx = (site / "index.html").read_text()
    assert "$5 and $10" in idx and "<math" not in idx.split("Prices such as")[1].split("</p>")[0]
    assert page.index("<math") < page.index('id="the-field"')  # the summary (front matter) has its maths too


def test_nbdev_processing_hides_and_documents(site):
    page = (site / "math.html").read_text()
    assert "HIDDEN_MARKER" not in page and "#|" not in page  # `#| hide` cell dropped, no directives shown
    assert '<h3 id="scale">scale</h3>' in page  # show_doc's signature and docments
    sig = page.split('id="scale"')[1].split("</pre>")[0]
    assert "by" in sig and "the factor" in sig and "2.0" in sig
    assert "data:image/png;base64," in page and "<pre class=\"output\"><code>6.0" in page


def test_nothing_needs_the_network(site):
    for f in [*site.glob("*.html"), site / "search.js"]:
        page = f.read_text()
        assert bd.remote_references(page) == [], f.name
        assert not re.search(r"<(script|link|img)\b[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I), f.name
        assert "mathjax" not in page.lower() and "katex" not in page.lower()
    assert bd.remote_references('<img src="https://x.org/a.png">') and bd.remote_references("url(//cdn.x/f.woff)")
    page = dict(src="07_x.ipynb", out="x.html", title="x", html='<main><script src="https://cdn.x/m.js"></script></main>')
    with pytest.raises(bd.DocsError, match=r"07_x.ipynb: the page would need the network"):
        bd.finish([page], "site", "")


def test_links_point_at_local_pages(site):
    assert 'href="math.html#the-field"' in (site / "index.html").read_text()
    assert 'href="notes.html"' in (site / "index.html").read_text()
    assert 'href="index.html">link back' in (site / "notes.html").read_text()
    page = dict(src="a.ipynb", out="a.html", title="a", html='<main><a href="https://h.io/p/b.html#x">b</a>'
                '<a href="https://h.io/p/">home</a><a href="https://other.org/p/b.html#c.d">o</a>'
                '<a href="https://h.io/p/b.html#trainer.fit">m</a><a href="a.ipynb#y">self</a></main><!--SITE-NAV-->')
    bd.finish([page], "site", "https://h.io/p/")
    assert 'href="b.html#x"' in page["html"] and 'href="index.html"' in page["html"]
    assert 'href="a.html#y"' in page["html"]
    assert 'href="b.html#trainerfit"' in page["html"]  # nbdev's `#name.method`, pandoc's (GitHub-style) id
    assert 'href="https://other.org/p/b.html#c.d"' in page["html"]


def test_search_index_finds_sections(site):
    index = _index(site)
    assert ["math.html", "the-field", "The field"] in [e[:3] for e in index]
    scale = next(e for e in index if e[:2] == ["math.html", "scale"])
    assert "the factor" in scale[3]
    assert any(e[0] == "notes.html" and "link back" in e[3] for e in index)


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (apt-get install chromium)")
def test_search_box_works_in_a_browser(site):
    "The page's own script fills the result list from search.js (the query comes from ?q= as typing would)."
    url = (site / "notes.html").as_uri() + "?q=the%20factor"
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--dump-dom", url], capture_output=True, text=True, timeout=120)
    hits = r.stdout.split('id="search-results"')[1].split("</ul>")[0]
    assert re.findall(r'href="([^"]+)"', hits) == ["math.html#scale"], r.stderr[-2000:]


def test_failing_pages_are_named_and_nothing_is_written(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    shutil.copy(FIXTURE / "index.ipynb", nbs / "index.ipynb")
    nb = json.loads((FIXTURE / "index.ipynb").read_text())
    nb["cells"] = [{"cell_type": "markdown", "metadata": {}, "source": "# broken"},
                   {"cell_type": "markdown", "metadata": {}, "source": "See $\\notacommand{x}$."}]
    (nbs / "07_broken.ipynb").write_text(json.dumps(nb))
    # an import cell that uses a variable of an earlier test cell: nbdev_test passes, nbdev's docs processors fail
    code = lambda src: {"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
    nb["cells"] = [{"cell_type": "markdown", "metadata": {}, "source": "# mixed"}, code("#| default_exp mixed"),
                   code("#| export\ndef f(): return 1"), code("x = f()"), code("import math\nprint(math.sqrt(x))")]
    (nbs / "08_mixed.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "site"
    assert _build(nbs, out) == 1
    err = capsys.readouterr().err
    assert "2 of 3 page(s) failed" in err
    assert "07_broken.ipynb" in err and "\\notacommand" in err
    assert "08_mixed.ipynb" in err and "NameError: name 'x' is not defined" in err and "keep imports apart" in err
    assert not out.exists()  # all-or-nothing: a failing page, no site


def test_cli_help_is_cheap():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--out" in r.stdout and "--nbs" in r.stdout


def test_quarto_on_the_path_hands_over_to_nbdev_docs(monkeypatch):
    calls = []
    monkeypatch.setattr(bd.shutil, "which", lambda name: "/opt/quarto/bin/quarto" if name == "quarto" else None)
    monkeypatch.setattr(bd.subprocess, "call", lambda cmd, cwd=None: calls.append((cmd, cwd)) or 0)
    assert bd.main([]) == 0
    assert len(calls) == 1 and Path(calls[0][0][0]).name == "nbdev_docs" and calls[0][1] == bd.ROOT


def test_the_whole_site_builds(tmp_path, capsys):
    """`make docs` on nbs/: every notebook through nbdev's processors (a cell failing there fails here), every page
    through pandoc (unsupported TeX, a remote script fail here); its cost is in nbs/decisions.md D-docs-4."""
    t0 = time.time()
    rc = _build(ROOT / "nbs", tmp_path)
    assert rc == 0, capsys.readouterr().err[-5000:]
    srcs = bd.find_sources(ROOT / "nbs")
    assert len(json.loads((tmp_path / ".build_docs_manifest.json").read_text())) == len(srcs)
    drift = (tmp_path / "drift.html").read_text()
    assert drift.count("<math") > 20 and "$" not in _text_outside_code(drift)
    assert '<h3 id="release_drift_loss">release_drift_loss</h3>' in drift and (tmp_path / "decisions.html").is_file()
    print(f"the whole site: {len(srcs)} pages in {time.time() - t0:.1f} s")
