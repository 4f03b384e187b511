#!/usr/bin/env python
"""Build the documentation site of `drifting` (`make docs`).

With `quarto` on the PATH (and no --out/--nbs/--no-quarto) this runs `nbdev_docs`, nbdev's own pipeline.
Without quarto it renders the site itself, offline:

1. every notebook in nbs/ goes through nbdev's documentation processors (`FilterDefaults`, what
   `nbdev_proc_nbs` runs): `#| hide` and `#| export` cells are dropped, `show_doc` cells with the signatures
   and docments of exported functions are added and executed, the title cell becomes front matter;
   the processed notebooks are written to a temporary folder;
2. each processed notebook is cleaned (quarto cell options such as `#| echo: false` are applied and removed,
   nbdev-specific cell keys are dropped, the result is validated by nbformat) and converted to HTML by
   nbconvert's `lab` template with its CSS inlined; Markdown files in nbs/ (decisions.md) become pages too;
3. LaTeX in Markdown (`$...$`, `$$...$$`, `\\begin{env}...\\end{env}`) is converted to MathML by `latex2mathml`
   while mistune parses the Markdown, so code spans and code blocks keep their `$` and no maths reaches the
   browser as TeX; no MathJax, require.js or widget script is included;
4. every page gets a sidebar linking all pages in notebook order and the sections of the current page;
   links to notebooks/Markdown files and to the project's doc_host are rewritten to the local pages.

The pages need no network and work from `file://`. Exit status is non-zero, with a message naming every
failing notebook, when any page fails (processing, unsupported LaTeX, a remote script or stylesheet reference);
then nothing is written.

Usage: python tools/build_docs.py [--out DIR] [--nbs DIR] [--no-quarto]
"""
from __future__ import annotations

import argparse, contextlib, html, json, os, re, shutil, subprocess, sys, tempfile, time, traceback, warnings
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ".build_docs_manifest.json"


class DocsError(Exception):
    "A failure the user must fix; the message says which file and what went wrong."


# ----------------------------------------------------------------------------------------------------------
# LaTeX -> MathML
# ----------------------------------------------------------------------------------------------------------
_LABEL = re.compile(r"\\label\{[^{}]*\}")
_TAG = re.compile(r"\\tag\*?\{([^{}]*)\}")
# unknown commands come back as identifiers named `\foo`; a stray `&` means an unsupported alignment environment
_UNCONVERTED = re.compile(r">\s*(\\[A-Za-z]+|\\[|{}]|&)\s*<")
# latex2mathml copies the delimiter after \big, \Bigl, ... verbatim into <mo>: map it to its character
_DELIMS = {r"\|": "\u2016", r"\Vert": "\u2016", r"\lVert": "\u2016", r"\rVert": "\u2016", r"\vert": "|",
           r"\lvert": "|", r"\rvert": "|", r"\{": "{", r"\}": "}", r"\lbrace": "{", r"\rbrace": "}",
           r"\langle": "\u27e8", r"\rangle": "\u27e9", r"\lceil": "\u2308", r"\rceil": "\u2309",
           r"\lfloor": "\u230a", r"\rfloor": "\u230b", r"\backslash": "\\", r"\lbrack": "[", r"\rbrack": "]"}
_MO_DELIM = re.compile(r"(<mo\b[^>]*>)\s*(\\[A-Za-z]+|\\[|{}])\s*(</mo>)")


# Chromium draws a delimiter that is the bare base of a script (`\rVert^2`, `\big)^2`) small and lowered;
# inside an <mrow> it keeps its size, as in TeX
_SCRIPT_BASE_MO = re.compile(r"(<(?:msup|msub|msubsup)\b[^>]*>)\s*(<mo\b[^>]*>([^<]*)</mo>)")
_BARE_FENCE_MO = re.compile(r"<mo>([^<]*)</mo>")
_FENCE_CHARS = set("()[]{}|\u2016\u27e8\u27e9\u2308\u2309\u230a\u230b")


# latex2mathml writes \cos, \log, \exp as a bare multi-letter <mi>; TeX puts a thin space between such an operator
# name and a neighbouring letter or number (`t\cos t`), MathML Core does not
_OPNAME = r"<mi>[A-Za-z]{2,}</mi>"
_THIN = '<mspace width="0.1667em"></mspace>'
_OP_BEFORE = re.compile(rf"(</mi>|</mn>|</msub>|</msup>|</msubsup>)(?={_OPNAME})")
_OP_AFTER = re.compile(rf"({_OPNAME})(?=<mi\b|<mn\b|<msub\b|<msup\b|<msubsup\b|<mfrac\b)")


# a sign right after an opening bracket, a comma, a relation or another operator is unary in TeX (`[-1, 1]`,
# `= -x`); Chromium spaces every non-first <mo>−</mo> as a binary operator
_SIGN_AFTER_MO = re.compile(r"(<mo\b[^>]*>([^<]*)</mo>)<mo>(&#x02212;|&#x0002B;|&#x000B1;|\u2212|\+|\u00b1)</mo>")
_CLOSERS = set(")]}|\u2016\u27e9\u2309\u230b!\u2032")


_SLASH_MO = re.compile(r"<mo>(&#x0002F;|/)</mo>")  # `/` is an ordinary symbol in TeX: no space around it


def _polish_mathml(mml: str) -> str:
    mml = _SLASH_MO.sub(r'<mo lspace="0em" rspace="0em">\1</mo>', mml)
    mml = _SIGN_AFTER_MO.sub(lambda m: m.group(0) if html.unescape(m.group(2)).strip() in _CLOSERS else
                             f'{m.group(1)}<mo lspace="0em" rspace="0em">{m.group(3)}</mo>', mml)
    mml = _OP_AFTER.sub(lambda m: m.group(1) + _THIN, _OP_BEFORE.sub(lambda m: m.group(1) + _THIN, mml))
    mml = _MO_DELIM.sub(lambda m: m.group(1) + html.escape(_DELIMS[m.group(2)]) + m.group(3)
                        if m.group(2) in _DELIMS else m.group(0), mml)
    # a bare \lVert, \rVert, | ... does not grow in TeX; without stretchy="false" Chromium stretches the opening
    # one to the row's height and not the closing one
    mml = _BARE_FENCE_MO.sub(lambda m: '<mo stretchy="false">' + m.group(1) + "</mo>"
                             if html.unescape(m.group(1)).strip() in _FENCE_CHARS else m.group(0), mml)
    return _SCRIPT_BASE_MO.sub(lambda m: f"{m.group(1)}<mrow>{m.group(2)}</mrow>"
                               if html.unescape(m.group(3)).strip() in _FENCE_CHARS else m.group(0), mml)


def tex_to_mathml(tex: str, display: bool) -> str:
    "Convert one LaTeX formula (without delimiters) to a MathML `<math>` element; raise `DocsError` if unsupported."
    from latex2mathml.converter import convert
    src = tex.strip()
    if not src: raise DocsError("empty formula ($$ $$ or $ $)")
    tag = _TAG.search(src)
    body = _TAG.sub("", _LABEL.sub("", src))
    # latex2mathml knows align*/split but not aligned/gathered; the layout is the same inside a display formula
    body = (body.replace(r"\begin{aligned}", r"\begin{align*}").replace(r"\end{aligned}", r"\end{align*}")
                .replace(r"\begin{gathered}", r"\begin{gather*}").replace(r"\end{gathered}", r"\end{gather*}"))
    try:
        mml = convert(body, display="block" if display else "inline")
    except Exception as e:  # latex2mathml raises its own exception types for malformed input
        raise DocsError(f"latex2mathml cannot convert {_show(src, display)}: {type(e).__name__}: {e}") from e
    mml = _polish_mathml(mml)
    bad = _UNCONVERTED.search(mml)
    if bad:
        raise DocsError(f"unsupported LaTeX `{bad.group(1)}` in {_show(src, display)}: "
                        "rewrite it with commands latex2mathml supports (e.g. align* instead of eqnarray)")
    alt = html.escape(src, quote=True)
    mml = mml.replace("<math ", f'<math alttext="{alt}" ', 1)
    if display:
        tag_html = f'<span class="math-tag">({html.escape(tag.group(1))})</span>' if tag else ""
        return f'<span class="math-display">{mml}{tag_html}</span>'
    return mml


def _show(src, display):
    d = "$$" if display else "$"
    return f"{d}{src if len(src) < 120 else src[:117] + '...'}{d}"


# ----------------------------------------------------------------------------------------------------------
# Markdown -> HTML (mistune via nbconvert, maths to MathML)
# ----------------------------------------------------------------------------------------------------------
def _markdown_classes():
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class MathMLRenderer(IPythonRenderer):
        "nbconvert's renderer, but maths becomes MathML instead of TeX left for MathJax."
        def block_math(self, body): return tex_to_mathml(body, display=True)
        def inline_math(self, body): return tex_to_mathml(body, display=False)
        def multiline_math(self, text): return text
        # nbconvert re-serialises every inline HTML fragment through BeautifulSoup to embed images, which turns
        # `<a href=..>` into `<a href=..></a>`; only fragments holding an <img> need that
        def inline_html(self, html_):
            return super().inline_html(html_) if "<img" in html_.lower() else html_
        def block_html(self, html_):
            return super().block_html(html_) if "<img" in html_.lower() else html_
        def latex_environment(self, name, body):
            if name.rstrip("*") in ("equation", "displaymath"): return tex_to_mathml(body, display=True)
            return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

    return MathMLRenderer, MarkdownWithMath


# quarto link attributes such as show_doc's `[source](url){target="_blank" style="float:right"}`
_LINK_ATTRS = re.compile(r"(\[[^\]\n]*\]\([^)\s]*\))\{([^}\n]*)\}")


def _quarto_link_attrs(md: str) -> str:
    def repl(m):
        link, attrs = m.group(1), m.group(2)
        if not re.search(r"\b(target|style)\s*=|^\s*\.", attrs): return m.group(0)
        text, url = re.match(r"\[([^\]]*)\]\(([^)]*)\)", link).groups()
        cls = "source-link" if "float:right" in attrs.replace(" ", "") else "ext-link"
        return f'<a href="{html.escape(url, quote=True)}" class="{cls}">{text}</a>'
    return _LINK_ATTRS.sub(repl, md)


def render_markdown(md: str, path: str = "", attachments: dict | None = None) -> str:
    "Markdown (with maths) to HTML, the way every page renders it."
    MathMLRenderer, MarkdownWithMath = _markdown_classes()
    renderer = MathMLRenderer(escape=False, attachments=attachments or {}, embed_images=True, path=path,
                              anchor_link_text="¶", exclude_anchor_links=False)
    return MarkdownWithMath(renderer=renderer).render(_quarto_link_attrs(md))


# ----------------------------------------------------------------------------------------------------------
# nbdev processing and notebook cleaning
# ----------------------------------------------------------------------------------------------------------
_DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_WARNING_CELL = "<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->"


def nbdev_process(src: Path, dst: Path) -> None:
    "Run nbdev's documentation processors (`nbdev_proc_nbs` without quarto) on `src`, writing `dst`."
    from execnb.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults
    nb = read_nb(src)
    # as nbdev's docs driver does: exported code runs in test mode; its warnings are shown, naming the notebook;
    # from the notebook's folder, as nbdev_test runs it (a cell may name files relative to nbs/)
    with mock.patch.dict(os.environ, IN_TEST="1"), contextlib.chdir(src.parent), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            FilterDefaults()(nb)
        finally:
            for w in (w for w in caught if not issubclass(w.category, DeprecationWarning)):
                msg = str(w.message).strip().replace("\n", "\n    ")
                print(f"\n  nbdev warning for {src.name}: {msg}\n  ...", end="", flush=True)
    write_nb(nb, dst)


def _split_directives(source: str):
    "Leading quarto/nbdev `#|` lines of a code cell -> (dict, remaining source)."
    lines, opts = source.splitlines(), {}
    i = 0
    while i < len(lines) and (m := _DIRECTIVE.match(lines[i])):
        opts[m.group(1).lower()] = m.group(2).strip().strip("'\"").lower()
        i += 1
    return opts, "\n".join(lines[i:]).strip("\n")


def _front_matter(text: str) -> tuple[dict, str]:
    "YAML front matter (`---` ... `---`) at the top of `text` -> (dict, the text after it); ({}, text) if none."
    import yaml
    if not text.startswith("---"): return {}, text
    end = text.find("\n---", 3)
    if end < 0: return {}, text
    try: fm = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError as e: raise DocsError(f"front matter is not valid YAML: {e}") from e
    return (fm, text[end + 4:].lstrip("\n")) if isinstance(fm, dict) else ({}, text)


def clean_notebook(processed: Path):
    """Processed notebook -> (clean nbformat v4 notebook, front matter dict).
    Applies quarto cell options left by nbdev (echo/include/output), drops nbdev-specific keys."""
    import nbformat
    from nbformat import v4
    raw = json.loads(processed.read_text(encoding="utf-8"))
    cells = raw.get("cells", [])
    fm = {}
    if cells and cells[0].get("cell_type") == "raw":  # nbdev's front matter (title, description, output-file)
        src = cells[0].get("source", "")
        fm = _front_matter("".join(src) if isinstance(src, list) else src)[0]
    out = []
    for c in cells:
        src = c.get("source", "")
        if isinstance(src, list): src = "".join(src)
        kind = c.get("cell_type")
        if kind == "markdown":
            if src.strip() == _WARNING_CELL or not src.strip(): continue
            out.append(v4.new_markdown_cell(src, attachments=c.get("attachments") or None)
                       if c.get("attachments") else v4.new_markdown_cell(src))
        elif kind == "code":
            opts, body = _split_directives(src)
            if opts.get("include") == "false": continue
            outputs = [] if opts.get("output") == "false" else [_clean_output(o) for o in c.get("outputs", [])]
            outputs = [o for o in outputs if o is not None]
            if opts.get("echo") == "false": body = ""
            if not body.strip() and not outputs: continue
            cell = v4.new_code_cell(body, outputs=[nbformat.from_dict(o) for o in outputs])
            if not body.strip(): cell.metadata["hide_source"] = True  # read by PAGE_TEMPLATE
            out.append(cell)
        # raw cells (front matter, LaTeX, reST) are not shown on an HTML page, as in quarto
    nb = v4.new_notebook(cells=out)
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python", "pygments_lexer": "ipython3"}}
    nbformat.validate(nb)
    return nb, fm


def _clean_output(o: dict):
    "Keep an output in nbformat's shape; text/latex outputs get a MathML text/html rendering."
    o = {k: v for k, v in o.items() if k in ("output_type", "name", "text", "data", "metadata", "execution_count",
                                              "ename", "evalue", "traceback")}
    t = o.get("output_type")
    if t == "stream":
        o["text"] = "".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "")
    elif t in ("display_data", "execute_result"):
        data = {k: "".join(v) if isinstance(v, list) else v for k, v in (o.get("data") or {}).items()}
        if "text/latex" in data and "text/html" not in data:
            data["text/html"] = render_markdown(data["text/latex"])
        if "application/vnd.jupyter.widget-view+json" in data:  # widgets need their JS from a CDN
            data.pop("application/vnd.jupyter.widget-view+json")
            if not data: return None
        o["data"] = data
        o.setdefault("metadata", {})
        if t == "execute_result" and not isinstance(o.get("execution_count"), int): o["execution_count"] = None
    elif t == "error":
        o.setdefault("ename", ""); o.setdefault("evalue", ""); o.setdefault("traceback", [])
    else:
        return None
    return o


# ----------------------------------------------------------------------------------------------------------
# HTML export
# ----------------------------------------------------------------------------------------------------------
PAGE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_css -%}<style type="text/css">@@SITE_CSS@@</style>{%- endblock html_head_css -%}
{%- block body_header -%}
<body class="jp-Notebook site-body" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<nav id="site-nav" class="site-nav"></nav>
<main class="site-main">
<header id="title-block" class="title-block"></header>
{%- endblock body_header -%}
{% block input_group -%}
{%- if not cell.metadata.get('hide_source') -%}{{ super() }}{%- endif -%}
{% endblock input_group %}
{% block body_footer %}
</main>
</body>
{% endblock body_footer %}
"""

SITE_CSS = r"""
:root { --site-nav-w: 15rem; }
html, body.site-body { margin: 0; padding: 0; }
body.site-body { background: #fff; }
.site-nav { position: fixed; top: 0; bottom: 0; left: 0; width: var(--site-nav-w); overflow-y: auto; overflow-x: hidden;
  box-sizing: border-box; padding: 1.2rem 0.9rem; background: #f6f7f9; border-right: 1px solid #e1e4e8;
  font-family: var(--jp-ui-font-family); font-size: 14px; line-height: 1.45; }
.site-nav .site-name { display: block; font-size: 1.25rem; font-weight: 700; color: #24292f;
  text-decoration: none; margin-bottom: 1rem; }
.site-nav ul { list-style: none; margin: 0; padding: 0; }
.site-nav li { margin: 0.1rem 0; }
.site-nav a { color: #0b57d0; text-decoration: none; display: block; padding: 0.15rem 0.4rem; border-radius: 4px; }
.site-nav a:hover { background: #e8eefc; }
.site-nav li.current > a { background: #dde7fb; color: #0b3d91; font-weight: 600; }
.site-nav .nav-num { color: #6e7781; font-family: var(--jp-code-font-family); font-size: 0.85em; font-weight: 400;
  margin-right: 0.15em; }
.site-nav ul.toc { margin: 0.15rem 0 0.4rem 0.8rem; border-left: 2px solid #d0d7de; }
.site-nav ul.toc a { font-size: 0.92em; color: #444c56; padding: 0.05rem 0.5rem; }
.site-main { margin-left: var(--site-nav-w); max-width: 62rem; padding: 1.5rem 2.5rem 4rem 2.5rem;
  box-sizing: border-box; }
.title-block h1 { font-size: 2.1rem; margin: 0.2rem 0 0.3rem 0; font-family: var(--jp-content-font-family); }
.title-block .description { font-size: 1.1rem; color: #57606a; margin: 0 0 1.2rem 0;
  font-family: var(--jp-content-font-family); }
.title-block .description p { margin: 0; }
.jp-Notebook .jp-Cell { padding: 0.2rem 0; }
.jp-RenderedHTMLCommon { padding-right: 0; font-size: 15px; line-height: 1.6; }
.jp-RenderedHTMLCommon table { margin: 0.6rem auto 1rem 0; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { text-align: left; vertical-align: top; }
.jp-RenderedHTMLCommon a.anchor-link { display: none; }
.jp-RenderedHTMLCommon h1:hover > a.anchor-link, .jp-RenderedHTMLCommon h2:hover > a.anchor-link,
.jp-RenderedHTMLCommon h3:hover > a.anchor-link { display: inline; color: #aaa; text-decoration: none;
  margin-left: 0.3em; }
.jp-InputArea-editor { border-radius: 4px; }
.jp-InputArea, .jp-InputArea-editor { overflow: visible; }
.cm-editor .highlight pre { overflow-x: auto; }
.jp-RenderedMarkdown pre { background: var(--jp-cell-editor-background, #f5f5f5); padding: 0.55em 0.8em;
  border: 1px solid var(--jp-cell-editor-border-color, #e0e0e0); border-radius: 4px; overflow-x: auto;
  margin: 0.5em 0 0.9em 0; line-height: 1.45; }
.jp-RenderedMarkdown pre code { background: none; padding: 0; }
.jp-OutputArea-output.jp-RenderedMarkdown pre { font-family: var(--jp-code-font-family); }
.jp-OutputArea-output.jp-RenderedMarkdown h3 { margin-top: 0.4em; font-family: var(--jp-code-font-family); }
.site-nav li a { overflow-wrap: anywhere; }
a.source-link { float: right; font-size: smaller; }
math { font-family: "Latin Modern Math", "STIX Two Math", "Cambria Math", "DejaVu Math TeX Gyre", math;
  font-size: 1.08em; }
.math-display { display: block; position: relative; overflow-x: auto; overflow-y: hidden; margin: 0.7rem 0;
  padding: 0.1rem 0; }
.math-display > math { display: block math; }
mtable[columnspacing^="0em"] > mtr > mtd[columnalign="right"] { padding-right: 0; }
mtable[columnspacing^="0em"] > mtr > mtd[columnalign="left"] { padding-left: 0; }
math [mathvariant="bold"], math [mathvariant="bold-italic"] { font-weight: bold; }
mtd[columnalign="left"] { text-align: left; }
mtd[columnalign="right"] { text-align: right; }
mtd[columnalign="center"] { text-align: center; }
.math-display .math-tag { position: absolute; right: 0; top: 50%; transform: translateY(-50%); }
@media (max-width: 52rem) {
  .site-nav { position: static; width: auto; border-right: none; border-bottom: 1px solid #e1e4e8; }
  .site-main { margin-left: 0; padding: 1rem; }
}
"""


def make_exporter(template_dir: Path, nbs_path: Path):
    from jinja2 import pass_context
    from nbconvert import HTMLExporter

    class SiteExporter(HTMLExporter):
        "nbconvert's lab HTML exporter with our Markdown/maths renderer and no remote scripts."
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {}) or {}
            return render_markdown(source, path=str(nbs_path), attachments=cell.get("attachments", {}))

    (template_dir / "drifting_page.html.j2").write_text(PAGE_TEMPLATE.replace("@@SITE_CSS@@", SITE_CSS),
                                                        encoding="utf-8")
    exp = SiteExporter(template_name="lab", extra_template_basedirs=[str(template_dir)],
                       extra_template_paths=[str(template_dir)], template_file="drifting_page.html.j2",
                       exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True,
                       anchor_link_text="¶")
    return exp


# ----------------------------------------------------------------------------------------------------------
# site assembly
# ----------------------------------------------------------------------------------------------------------
class Page:
    def __init__(self, src: Path, rel: str, kind: str):
        self.src, self.rel, self.kind = src, rel, kind  # rel: the file name in the nbs folder
        self.out = None     # output file name (relative to the site root)
        self.title = None
        self.description = None
        self.html = None
        self.toc = []


def find_sources(nbs: Path) -> list[Page]:
    "The notebooks of `nbs` (index first, then in file-name order), then its Markdown files; `_`/`.` names skipped."
    files = lambda ext: sorted(p for p in nbs.glob(f"*.{ext}") if not p.name.startswith((".", "_")))
    notebooks = sorted(files("ipynb"), key=lambda p: p.name != "index.ipynb")  # stable: index first
    return [Page(p, p.name, "ipynb") for p in notebooks] + [Page(p, p.name, "md") for p in files("md")]


def _slug(text: str) -> str:
    s = re.sub(r"[^\w\s.-]", "", text.strip().lower().replace("¶", ""))
    return re.sub(r"\s+", "-", s).strip("-") or "section"


def _md_title(md: str):
    "Title of a Markdown page (front matter `title`, else its first `# ` heading) and the text to render."
    fm, body = _front_matter(md)
    if fm.get("title"): return str(fm["title"]), body
    m = re.search(r"^#\s+(.+?)\s*#*\s*$", md, flags=re.MULTILINE)
    return (m.group(1) if m else None), md


def render_page(page: Page, exporter, tmp: Path) -> None:
    import nbformat
    from nbformat import v4
    if page.kind == "ipynb":
        processed = tmp / "proc" / page.rel
        processed.parent.mkdir(parents=True, exist_ok=True)
        try:
            nbdev_process(page.src, processed)
        except Exception as e:
            raise DocsError(f"nbdev's processors failed: {type(e).__name__}: {e}\n"
                            f"{_short_tb(e)}(for the docs nbdev runs only the exported cells, the cells that import "
                            "something and the show_doc cells, in order: a cell that mixes an import with code using "
                            "earlier test variables fails here even though nbdev_test passes; move the import to the "
                            "notebook's import cell)") from e
        nb, fm = clean_notebook(processed)
        page.title = str(fm.get("title") or page.src.stem)
        page.description = fm.get("description")
        page.out = str(fm.get("output-file") or Path(page.rel).with_suffix(".html"))
    else:
        text = page.src.read_text(encoding="utf-8")
        title, body = _md_title(text)
        page.title = title or page.src.stem
        page.out = str(Path(page.rel).with_suffix(".html"))
        nb = v4.new_notebook(cells=[v4.new_markdown_cell(body)])
        nb.metadata = {"language_info": {"name": "python"}}
        nbformat.validate(nb)
    resources = {"metadata": {"name": page.title, "path": str(page.src.parent)}}
    nb.metadata["title"] = page.title
    page.html, _ = exporter.from_notebook_node(nb, resources=resources)


def _short_tb(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    if cause is None: return ""
    lines = traceback.format_exception_only(type(cause), cause)
    return "  caused by: " + "".join(lines).strip().replace("\n", "\n  ") + "\n"


_REMOTE = [
    (re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.I), "a remote <script src>"),
    (re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?\s*(?:https?:)?//", re.I), "a remote <link href>"),
    (re.compile(r"@import\s+(?:url\()?\s*[\"']?\s*(?:https?:)?//", re.I), "a remote CSS @import"),
    (re.compile(r"url\(\s*[\"']?\s*(?:https?:)?//", re.I), "a remote CSS url()"),
    (re.compile(r"<(?:img|iframe|source|video|audio)\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.I),
     "a remote image/media src"),
]


def remote_references(text: str) -> list[str]:
    "Remote scripts, stylesheets, fonts or images in a page (each needs the network)."
    found = []
    for rx, what in _REMOTE:
        for m in rx.finditer(text):
            found.append(f"{what}: {text[m.start():m.start() + 100]!r}")
    return found


def finish_pages(pages: list[Page], site_name: str, doc_url: str) -> None:
    "Fill sidebar and title block, fix heading ids and links, check that nothing needs the network."
    from bs4 import BeautifulSoup
    by_src = {p.rel: p for p in pages}
    for page in pages:
        soup = BeautifulSoup(page.html, "html.parser")
        main = soup.find("main")
        # heading ids: quarto-style lowercase slugs, unique on the page (nbdev's links use `#name.lower()`)
        seen, heads = set(), {}
        for h in main.find_all(["h1", "h2", "h3", "h4", "h5", "h6"]):
            text = "".join(t for t in h.find_all(string=True, recursive=True)
                           if not (t.parent.name == "a" and "anchor-link" in (t.parent.get("class") or [])))
            slug, k = _slug(text), 1
            while slug in seen: k += 1; slug = f"{_slug(text)}-{k}"
            seen.add(slug)
            h["id"] = slug
            a = h.find("a", class_="anchor-link")
            if a is not None: a["href"] = "#" + slug
            heads.setdefault(h.name, []).append((slug, text.strip()))
        page.toc = heads.get("h2") or heads.get("h3") or []  # sections; a Markdown log may only have h3
        # links: our own published site and notebook/Markdown sources become local pages
        for a in soup.find_all("a", href=True):
            href = a["href"]
            if doc_url and href.startswith(doc_url):
                rest = href[len(doc_url):].lstrip("/")
                a["href"] = rest or "index.html"
                continue
            if re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I) or href.startswith(("#", "/")): continue
            path, _, frag = href.partition("#")
            target = by_src.get(path) if path.endswith((".ipynb", ".md")) else None
            if target is not None: a["href"] = target.out + (("#" + frag) if frag else "")
        # title block
        tb = soup.find(id="title-block")
        if tb is not None:
            if page.kind == "ipynb":
                h1 = soup.new_tag("h1", id="page-title")
                h1.append(BeautifulSoup(_inline_md(page.title), "html.parser"))
                tb.append(h1)
                if page.description:
                    d = soup.new_tag("div", attrs={"class": "description"})
                    d.append(BeautifulSoup(render_markdown(str(page.description)), "html.parser"))
                    tb.append(d)
            else:
                tb.decompose()
        # sidebar
        nav = soup.find(id="site-nav")
        parts = [f'<a class="site-name" href="index.html">{html.escape(site_name)}</a><ul>']
        for p in pages:
            cur = p is page
            label = _inline_md(p.title)
            num = re.match(r"^(\d+[a-z]?)_", Path(p.rel).name)  # 00_core -> "00 core"
            prefix = f'<span class="nav-num">{num.group(1)}</span> ' if num else ""
            parts.append(f'<li class="{"current" if cur else ""}"><a href="{p.out}" title="{html.escape(p.rel)}">'
                         f'{prefix}{label}</a>')
            if cur and page.toc:
                parts.append('<ul class="toc">' + "".join(
                    f'<li><a href="#{s}">{html.escape(t)}</a></li>' for s, t in page.toc) + "</ul>")
            parts.append("</li>")
        parts.append("</ul>")
        nav.append(BeautifulSoup("".join(parts), "html.parser"))
        if soup.title is not None:
            soup.title.string = f"{page.title} – {site_name}" if page.title != site_name else site_name
        page.html = str(soup)
        bad = remote_references(page.html)
        if bad:
            raise DocsError(f"{page.rel}: the page would need the network:\n  " + "\n  ".join(bad[:5]))


def _inline_md(text: str) -> str:
    "Markdown of a title/label, rendered without the surrounding <p>."
    out = render_markdown(str(text)).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", out, flags=re.S)


def run_nbdev_docs() -> int:
    exe = Path(sys.executable).with_name("nbdev_docs")
    cmd = [str(exe)] if exe.exists() else ["nbdev_docs"]
    print(f"build_docs: quarto found at {shutil.which('quarto')}; running {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def build(nbs: Path, out: Path) -> list[Page]:
    "Render every page of `nbs` into `out`; raise `DocsError` listing every failing file (then nothing is written)."
    from nbdev.config import get_config
    if not nbs.is_dir(): raise DocsError(f"notebook folder {nbs} does not exist (give --nbs a folder of notebooks)")
    pages = find_sources(nbs)
    if not any(p.kind == "ipynb" for p in pages): raise DocsError(f"no notebooks found in {nbs}")
    cfg = get_config()
    site_name = cfg.get("title", None) or cfg.get("lib_name", "docs")
    doc_url = (cfg.get("doc_host", "") or "").rstrip("/") + "/" + (cfg.get("doc_baseurl", "") or "").strip("/")
    doc_url = doc_url.rstrip("/") + "/" if cfg.get("doc_host", "") else ""
    t_all, errors = time.time(), []
    with tempfile.TemporaryDirectory(prefix="build_docs_") as td:
        tmp = Path(td)
        (tmp / "templates").mkdir()
        exporter = make_exporter(tmp / "templates", nbs)
        for i, page in enumerate(pages, 1):
            t0 = time.time()
            print(f"[{i}/{len(pages)}] {page.rel} ...", end="", flush=True)
            try:
                render_page(page, exporter, tmp)
            except Exception as e:  # every failure names its file; nbconvert/template errors keep a short traceback
                print(" FAILED", flush=True)
                detail = str(e) if isinstance(e, DocsError) else f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
                errors.append(detail if detail.startswith(page.rel) else f"{page.rel}: {detail}")
                continue
            print(f" -> {page.out} ({time.time() - t0:.1f} s)", flush=True)
    if errors:
        raise DocsError(f"{len(errors)} of {len(pages)} page(s) failed; nothing was written to {out}:\n" + "\n".join(errors))
    outs = [p.out for p in pages]
    dup = {o for o in outs if outs.count(o) > 1}
    if dup: raise DocsError(f"several sources render to the same page {sorted(dup)}: rename one of them")
    finish_pages(pages, site_name, doc_url)
    write_site(pages, out)
    print(f"build_docs: {len(pages)} page(s) in {out} ({time.time() - t_all:.1f} s); open {out / 'index.html'}", flush=True)
    return pages


def write_site(pages: list[Page], out: Path) -> None:
    "Write the pages, remove pages a previous build wrote that no longer exist."
    out.mkdir(parents=True, exist_ok=True)
    man = out / MANIFEST
    old = []
    if man.exists():
        try: old = json.loads(man.read_text(encoding="utf-8"))
        except (OSError, ValueError): old = []
    new = [p.out for p in pages]
    for p in pages:
        dst = out / p.out
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.write_text(p.html, encoding="utf-8")
        os.replace(tmp, dst)
    for o in old:
        if o not in new and (out / o).is_file() and (out / o).resolve().is_relative_to(out.resolve()):
            (out / o).unlink()
    man.write_text(json.dumps(new, indent=1), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="site folder (default: doc_path of settings.ini, i.e. docs/)")
    ap.add_argument("--nbs", type=Path, help="notebook folder (default: nbs_path of settings.ini, i.e. nbs/)")
    ap.add_argument("--no-quarto", action="store_true", help="use this renderer even when quarto is installed")
    args = ap.parse_args(argv)
    if not (args.out or args.nbs or args.no_quarto) and shutil.which("quarto"):
        return run_nbdev_docs()
    out = (args.out or ROOT / "docs").resolve()
    nbs = (args.nbs or ROOT / "nbs").resolve()
    os.chdir(ROOT)  # nbdev finds settings.ini from the working directory
    try:
        build(nbs, out)
    except DocsError as e:
        print(f"\nbuild_docs: error: {e}", file=sys.stderr, flush=True)
        return 1
    except ImportError as e:
        print(f"\nbuild_docs: error: a documentation dependency is missing ({e}); "
              "run `make venv` or `pip install -r requirements.lock.txt`", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
