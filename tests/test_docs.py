"""`make docs` without quarto: tools/build_docs.py renders a small fixture site (tests/fixtures/docs_small)
offline, with maths as MathML, nothing fetched from the network, and a page per notebook/Markdown file."""
import importlib.util, json, re, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "docs_small"


def _load_build_docs():
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build(bd, nbs, out) -> int:
    "Run build_docs on `nbs` into `out` from the repository root; its exit code."
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    try:
        return bd.main(["--nbs", str(nbs), "--out", str(out)])
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "Build the fixture site once, in this process (the heavy imports are paid once)."
    bd = _load_build_docs()
    out = tmp_path_factory.mktemp("site")
    assert _build(bd, FIXTURE, out) == 0
    return bd, out


def _text_outside_code(page: str) -> str:
    "Visible text of rendered Markdown, without <code>/<pre> and without MathML (whose alttext keeps the TeX)."
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(page, "html.parser")
    for t in soup.select("nav, pre, code, math, script, style, .jp-InputArea"): t.decompose()
    return soup.get_text(" ")


def test_every_source_has_a_page(site):
    _, out = site
    assert (out / "index.html").is_file()
    # nbdev's front matter names 01_math's page math.html; Markdown files keep their name
    for name in ["index.html", "math.html", "notes.html"]:
        assert (out / name).is_file(), name
    assert json.loads((out / ".build_docs_manifest.json").read_text()) == ["index.html", "math.html", "notes.html"]
    # the sidebar of every page links every page, in notebook order (index first, Markdown last)
    for name in ["index.html", "math.html", "notes.html"]:
        page = (out / name).read_text()
        nav = page[page.index('id="site-nav"'):page.index("</nav>")]
        assert re.findall(r'href="([^"#]+\.html)"', nav) == ["index.html", "index.html", "math.html", "notes.html"]


def test_maths_become_mathml_and_code_keeps_dollars(site):
    _, out = site
    page = (out / "math.html").read_text()
    assert page.count("<math") >= 8
    assert page.count('display="block"') >= 2                      # $$..$$ and the aligned block
    assert "\U0001D415" in page                                     # \mathbf{V} -> bold V (U+1D415)
    assert "<msqrt>" in page and "<mfrac>" in page and "\u2016" in page  # \sqrt, \frac, \lVert
    assert '<mtable' in page                                        # aligned -> a MathML table
    text = _text_outside_code(page)
    assert "$" not in text and "\\frac" not in text and "\\mathbf" not in text
    # `$` inside inline code and fenced code is left alone
    assert "cost = $x$" in page
    assert "'$$not maths$$'" in page
    # escaped dollars in prose stay dollars, not maths
    idx = (out / "index.html").read_text()
    assert "$5 and $10" in idx and "<math" not in idx.split("Prices such as")[1].split("</p>")[0]
    # the summary (front matter description) is rendered with its maths too
    assert page.index("<math") < page.index('id="the-field"')


def test_nbdev_processing_hides_and_documents(site):
    _, out = site
    page = (out / "math.html").read_text()
    assert "HIDDEN_MARKER" not in page                 # `#| hide` cell dropped
    assert "#|" not in page                            # no directive comments shown
    assert 'id="scale"' in page                        # show_doc heading for the exported function
    assert "the factor" in page                        # its docments
    assert "data:image/png;base64," in page            # images inline
    assert "6.0" in page                               # stream output kept


def test_nothing_needs_the_network(site):
    bd, out = site
    for f in out.glob("*.html"):
        page = f.read_text()
        assert bd.remote_references(page) == [], f.name
        assert not re.search(r"<(script|link|img)\b[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", page, re.I), f.name
        assert "mathjax" not in page.lower() and "require.min.js" not in page


def test_links_point_at_local_pages(site):
    _, out = site
    idx = (out / "index.html").read_text()
    assert 'href="math.html#the-field"' in idx and 'href="notes.html"' in idx
    assert 'href="index.html">link back' in (out / "notes.html").read_text()


def test_bad_latex_fails_naming_the_notebook(site, tmp_path, capsys):
    bd, _ = site
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    shutil.copy(FIXTURE / "index.ipynb", nbs / "index.ipynb")
    nb = json.loads((FIXTURE / "index.ipynb").read_text())
    nb["cells"] = [{"cell_type": "markdown", "metadata": {}, "source": "# broken"},
                   {"cell_type": "markdown", "metadata": {}, "source": "See $\\notacommand{x}$."}]
    (nbs / "07_broken.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "site"
    rc = _build(bd, nbs, out)
    err = capsys.readouterr().err
    assert rc == 1
    assert "07_broken.ipynb" in err and "\\notacommand" in err
    assert not (out / "index.html").exists()          # all-or-nothing: one failing page, no site


def test_cli_help_is_cheap():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--out" in r.stdout and "--nbs" in r.stdout


def test_quarto_on_the_path_hands_over_to_nbdev_docs(monkeypatch):
    bd = _load_build_docs()
    calls = []
    monkeypatch.setattr(bd.shutil, "which", lambda name: "/opt/quarto/bin/quarto" if name == "quarto" else None)
    monkeypatch.setattr(bd.subprocess, "call", lambda cmd, cwd=None: calls.append((cmd, cwd)) or 0)
    assert bd.main([]) == 0
    assert len(calls) == 1 and Path(calls[0][0][0]).name == "nbdev_docs" and calls[0][1] == bd.ROOT


def test_tex_the_converter_gets_wrong_is_repaired_or_refused(site):
    bd, _ = site
    body = lambda m: m[m.index("<math"):].split(">", 1)[1]  # MathML after the <math> tag (alttext keeps the TeX)
    m = bd.tex_to_mathml(r"\big\lVert f(\epsilon) - \mathrm{sg}\big(x\big)\big\rVert^2", display=True)
    assert "\\" not in body(m) and "\u2016" in m and 'display="block"' in m
    assert body(bd.tex_to_mathml(r"\begin{aligned}a&=b\\c&=d\end{aligned}", display=True)).count("<mtd") == 4
    with pytest.raises(bd.DocsError, match=r"\\foocommand"):
        bd.tex_to_mathml(r"\foocommand{x}", display=False)
