#!/usr/bin/env python
"""Build the documentation site of `drifting` (`make docs`).

With `quarto` on the PATH (and no option) this runs `nbdev_docs`. Without it, offline: nbdev's processors
(`FilterDefaults` via `nbdev.serve_drv`, as `nbdev_proc_nbs`) process every notebook of nbs/ in parallel; pandoc (the
`pypandoc-binary` wheel) renders each as the Markdown quarto would read, and each Markdown file of nbs/, to HTML with
`--mathml`. Pages get a sidebar of all pages, a search box (search.js: a small index), their sections, local links; a
page needing the network fails. When a page fails: exit status 1, every failing file named, nothing written."""

import argparse, html, json, os, re, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the Markdown of notebooks (CommonMark, as Jupyter reads it) with pandoc's maths, attributes, tables and raw blocks
READER = "commonmark_x-subscript-superscript-emoji-smart-implicit_header_references"
IMPORT_HINT = ("\n(nbdev runs the exported cells, the cells with an import and the show_doc cells, in order: a cell "
               "mixing an import with test code runs here, whatever its nbdev_test flags; keep imports apart)")


class DocsError(Exception):
    "A failure the user must fix; the message names the file and what went wrong."


def find_sources(nbs: Path) -> list[Path]:
    "The notebooks of `nbs` (index first, then by name), then its Markdown files; names starting `_`/`.` skipped."
    files = lambda ext: sorted(p for p in nbs.glob(f"*.{ext}") if not p.name.startswith((".", "_")))
    return sorted(files("ipynb"), key=lambda p: p.name != "index.ipynb") + files("md")


def process_notebooks(nbs: list[Path], dst: Path, workers: int = 2) -> dict[str, str]:
    "nbdev's processors on each notebook, `workers` spawned processes in the notebooks' folder; {notebook: error}."
    from nbdev.processors import FilterDefaults
    from nbdev.serve_drv import main as process_one  # sets IN_TEST=1, runs FilterDefaults, writes the notebook

    def failure(e):  # the exception and the first error of the worker's traceback (concurrent.futures keeps it)
        msg, root = f"{type(e).__name__}: {e}", re.findall(r"^\w+(?:Error|Exception|Exit)\b.*$", str(e.__cause__), re.M)
        return msg + (f"\n    caused by {root[0]}" if root and root[0] not in msg else "")

    n, ctx = max(1, min(workers, len(nbs))), get_context("spawn")
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=os.chdir, initargs=(nbs[0].parent,)) as ex:
        futs = {nb.name: ex.submit(process_one, (nb, dst / nb.name, FilterDefaults)) for nb in nbs}
        return {name: failure(f.exception()) for name, f in futs.items() if f.exception() is not None}


_OPTION = re.compile(r"^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# a $$..$$ formula on one line: in CommonMark a line of it starting `+ `, `- `, `# ` would open a list, a heading...
_one_line_maths = lambda md: re.sub(r"\$\$.+?\$\$", lambda m: m[0].replace("\n", " "), md, flags=re.S)
_text = lambda v: "".join(v) if isinstance(v, list) else str(v)  # nbformat stores text as a string or a list of lines


def _fence(text: str, cls: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks} {{.{cls}}}\n{_ANSI.sub('', text).rstrip()}\n{ticks}"


def _output(o: dict) -> str:
    "One cell output as Markdown: images inline, Markdown as is (show_doc), HTML raw, text as a code block."
    if o.get("output_type") == "stream": return _fence(_text(o.get("text", "")), "output")
    if o.get("output_type") == "error": return _fence("\n".join(o.get("traceback", [])), "error")
    data = {k: _text(v) for k, v in (o.get("data") or {}).items()}
    for mime in ("image/png", "image/jpeg"):
        if mime in data: return f"![](data:{mime};base64,{data[mime].strip()})"
    for mime in ("image/svg+xml", "text/markdown", "text/html", "text/latex"):
        if mime in data: return data[mime] if "/la" in mime or "/m" in mime else f"```{{=html}}\n{data[mime]}\n```"
    return _fence(data["text/plain"], "output") if "text/plain" in data else ""


def notebook_markdown(nb: dict) -> str:
    "A processed notebook as the Markdown quarto would read: front matter, cells, quarto cell options applied."
    parts = []
    for c in nb.get("cells", []):
        src = _text(c.get("source", ""))
        if c["cell_type"] == "raw" and src.startswith("---"): parts.append(src)  # nbdev's front matter
        elif c["cell_type"] == "markdown":
            for name, d in (c.get("attachments") or {}).items():
                src = src.replace(f"attachment:{name}", "".join(f"data:{m};base64,{b}" for m, b in d.items()))
            parts.append(_one_line_maths(src))
        elif c["cell_type"] == "code":
            lines, opts = src.splitlines(), {}
            while lines and (m := _OPTION.match(lines[0])):
                opts[m[1]] = m[2].strip("'\"").lower()
                lines.pop(0)
            if opts.get("include") == "false": continue
            if "\n".join(lines).strip() and opts.get("echo") != "false":
                parts.append(_fence("\n".join(lines), "python"))
            if opts.get("output") != "false": parts += [_output(o) for o in c.get("outputs", [])]
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>$pagetitle$</title><style>
body { margin: 0; font: 16px/1.6 system-ui, sans-serif; } math[display=block] { overflow: auto hidden; padding: 4px 0; }
#site-nav, #TOC { position: fixed; top: 0; bottom: 0; overflow-y: auto; box-sizing: border-box; padding: 1rem; }
#site-nav { left: 0; width: 16rem; background: #f6f8fa; border-right: 1px solid #d0d7de; font-size: .9rem; }
#TOC { right: 0; width: 15rem; font-size: .85rem; } #TOC ul { padding-left: 1rem; } #search { width: 100%; }
#TOC::before { content: "On this page"; font-weight: 600; } #site-nav .current > a { font-weight: 700; }
#site-nav ul { list-style: none; padding: 0; } a { text-decoration: none; } .description { color: #57606a; }
main { margin: 0 15rem 0 16rem; padding: 1rem 2.5rem 4rem; max-width: 54rem; } .site-name { font-weight: 700; }
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; } pre.error { border-left: 3px solid #cf222e; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2rem .4rem; } img { max-width: 100%; }
math { font-family: "Latin Modern Math", "STIX Two Math", "Cambria Math", "DejaVu Math TeX Gyre", math; }
@media (max-width: 75rem) { #TOC { display: none; } main { margin-right: 0; } }
$highlighting-css$
</style></head><body>
<nav id="site-nav"><!--SITE-NAV--></nav>
$if(toc)$<nav id="TOC">$table-of-contents$</nav>$endif$
<main>$if(title)$<header><h1 class="title">$title$</h1>
$if(description)$<div class="description">$description$</div>$endif$</header>$endif$
$body$</main><script src="search.js" data-external="1"></script></body></html>
"""

SEARCH_JS = """const box = document.getElementById("search"), hits = document.getElementById("search-results");
function search() {  // sections holding every word of the query, those with all of them in the heading first
  const words = box.value.toLowerCase().split(/\\s+/).filter(Boolean), found = [];
  if (words.length) for (const [page, id, title, text] of SEARCH_INDEX) {
    const t = title.toLowerCase(), all = t + " " + text.toLowerCase();
    if (words.every(w => all.includes(w))) found.push([words.every(w => t.includes(w)) ? 0 : 1, page, id, title]);
  }
  const esc = s => s.replace(/[<&]/g, c => (c == "<" ? "&lt;" : "&amp;"));
  hits.innerHTML = found.sort((a, b) => a[0] - b[0]).slice(0, 40)
    .map(([, page, id, t]) => `<li><a href="${page}${id ? "#" + id : ""}">${esc(t)} · ${page}</a></li>`).join("");
}
box.addEventListener("input", search);
box.value = new URLSearchParams(location.search).get("q") || "", search();  // page.html?q=words searches too
"""


def render(md: str, pandoc: str, template: Path, nbs: Path, title: str) -> str:
    "One page of HTML from pandoc (MathML, embedded images, the page's sections); DocsError on any warning."
    args = [pandoc, "-f", READER, "-t", "html5", "--mathml", "--standalone", "--template", str(template), "--toc",
            "--toc-depth=3", "--wrap=none", "--embed-resources", "--resource-path", str(nbs), "--fail-if-warnings"]
    r = subprocess.run(args + ["-M", f"pagetitle={title}"], input=md, capture_output=True, text=True, cwd=nbs)
    if r.returncode: raise DocsError("pandoc failed:\n    " + r.stderr.strip().replace("\n", "\n    "))
    return r.stdout


_REMOTE = re.compile(r"<(?:script|img|iframe|source|video|audio|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?"
                     r"//|@import\s+(?:url\()?\s*[\"']?\s*(?:https?:)?//|url\(\s*[\"']?\s*(?:https?:)?//", re.I)
_plain = lambda h: " ".join(html.unescape(re.sub(r"<[^>]+>", " ", h)).split())


def remote_references(page: str) -> list[str]:
    "Remote scripts, stylesheets, fonts or images in a page (each would need the network)."
    return [repr(page[m.start():m.start() + 100]) for m in _REMOTE.finditer(page)]


def finish(pages: list[dict], site: str, doc_url: str) -> list:
    "Sidebar and local links on every page; the search index, one entry per section: [page, id, heading, text]."
    by_src, index = {p["src"]: p["out"] for p in pages}, []
    for p in pages:
        body = p["html"]
        if doc_url: body = body.replace(f'href="{doc_url}"', 'href="index.html"').replace(f'href="{doc_url}', 'href="')
        # local links: a notebook or Markdown file -> its page; nbdev's `#class.method` -> pandoc's id `#classmethod`
        body = re.sub(r'href="(?![a-z][\w+.-]*:|/)([^"#]*)(#[^"]*)?"',
                      lambda m: f'href="{by_src.get(m[1], m[1])}{(m[2] or "").replace(".", "")}"', body)
        cur = lambda q: " class=current" if q is p else ""
        items = "".join(f'<li{cur(q)}><a href="{q["out"]}">{html.escape(q["title"])}</a></li>' for q in pages)
        nav = (f'<a class="site-name" href="index.html">{html.escape(site)}</a><input id="search" type="search" '
               f'placeholder="Search the docs" aria-label="Search"><ul id="search-results"></ul><ul>{items}</ul>')
        p["html"] = body.replace("<!--SITE-NAV-->", nav, 1)
        bad = remote_references(p["html"])
        if bad: raise DocsError(f"{p['src']}: the page would need the network:\n    " + "\n    ".join(bad[:5]))
        chunks = re.split(r'<h\d[^>]*\bid="([^"]*)"[^>]*>(.*?)</h\d>', p["html"].split("<main>")[1], flags=re.S)
        for i in range(0, len(chunks), 3):  # [text before the first heading, (id, heading, text) per heading...]
            hid, head = (chunks[i - 2], _plain(chunks[i - 1])) if i else ("", p["title"])
            index.append([p["out"], hid, head, _plain(re.sub(r"<math.*?</math>", " ", chunks[i], flags=re.S))[:4000]])
    return index


def build(nbs: Path, out: Path, workers: int = 2) -> list[dict]:
    "Render every page of `nbs` into `out`; DocsError naming every failing file (then nothing is written)."
    import pypandoc, yaml
    from nbdev.config import get_config

    if not nbs.is_dir(): raise DocsError(f"notebook folder {nbs} does not exist (give --nbs a folder of notebooks)")
    srcs = find_sources(nbs)
    if not any(s.suffix == ".ipynb" for s in srcs): raise DocsError(f"no notebooks found in {nbs}")
    cfg, t0 = get_config(), time.time()
    site = cfg.get("title", None) or cfg.get("lib_name", "docs")
    host, base = (cfg.get("doc_host", "") or "").rstrip("/"), (cfg.get("doc_baseurl", "") or "").strip("/")
    doc_url = "/".join(x for x in (host, base) if x) + "/" if host else ""  # nbdev links its published pages
    with tempfile.TemporaryDirectory(prefix="build_docs_") as tmp:
        errors = process_notebooks([s for s in srcs if s.suffix == ".ipynb"], Path(tmp), workers)
        print(f"build_docs: nbdev's processors ran on the notebooks ({time.time() - t0:.1f} s)", flush=True)
        hint, pages = IMPORT_HINT if errors else "", []
        for s in (s for s in srcs if s.name not in errors):
            md = _one_line_maths(s.read_text(encoding="utf-8")) if s.suffix == ".md" else notebook_markdown(json.loads(
                (Path(tmp) / s.name).read_text(encoding="utf-8")))
            fm = re.match(r"---\n(.*?)\n---\s*\n", md, re.S)  # YAML front matter (nbdev's, or a Markdown file's)
            fm, head = yaml.safe_load(fm[1]) if fm else None, re.search(r"^#\s+(.+?)\s*$", md, re.M)
            fm = fm if isinstance(fm, dict) else {}
            title = str(fm.get("title") or (head[1] if head and s.suffix == ".md" else s.stem)).replace("`", "")
            pages.append(dict(src=s.name, md=md, title=title, out=str(fm.get("output-file") or s.stem + ".html")))
        (template := Path(tmp) / "page.html").write_text(TEMPLATE, encoding="utf-8")

        def one(p):
            try: p["html"] = render(p["md"], pypandoc.get_pandoc_path(), template, nbs, f"{p['title']} – {site}")
            except DocsError as e: errors[p["src"]] = str(e)

        with ThreadPoolExecutor(max(1, workers)) as ex: list(ex.map(one, pages))
    if errors:
        raise DocsError(f"{len(errors)} of {len(srcs)} page(s) failed; nothing was written to {out}:\n"
                        + "\n".join(f"  {n}: {e}" for n, e in sorted(errors.items())) + hint)
    if len({p["out"] for p in pages}) < len(pages): raise DocsError("two sources render to one page (same output-file)")
    index = finish(pages, site, doc_url)
    write_site(pages, out, "const SEARCH_INDEX = " + json.dumps(index, ensure_ascii=False) + ";\n" + SEARCH_JS)
    print(f"build_docs: {len(pages)} pages in {out} ({time.time() - t0:.1f} s); open {out}/index.html", flush=True)
    return pages


def write_site(pages: list[dict], out: Path, search_js: str) -> None:
    "Write the pages and search.js; remove the pages an earlier build wrote that no longer exist."
    out.mkdir(parents=True, exist_ok=True)
    man, new = out / ".build_docs_manifest.json", [p["out"] for p in pages]
    old = json.loads(man.read_text(encoding="utf-8")) if man.exists() else []
    for name, text in [(p["out"], p["html"]) for p in pages] + [("search.js", search_js)]:
        (out / f".{name}.tmp").write_text(text, encoding="utf-8")
        os.replace(out / f".{name}.tmp", out / name)
    for o in set(old) - set(new):
        if (out / o).is_file() and (out / o).resolve().parent == out.resolve(): (out / o).unlink()
    man.write_text(json.dumps(new, indent=1), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="site folder (default: docs/)")
    ap.add_argument("--nbs", type=Path, help="notebook folder (default: nbs/)")
    ap.add_argument("--no-quarto", action="store_true", help="use this renderer even when quarto is installed")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for the processors")
    args = ap.parse_args(argv)
    if not (args.out or args.nbs or args.no_quarto) and shutil.which("quarto"):
        exe = Path(sys.executable).with_name("nbdev_docs")
        print(f"build_docs: quarto found at {shutil.which('quarto')}; running nbdev_docs", flush=True)
        return subprocess.call([str(exe) if exe.exists() else "nbdev_docs"], cwd=ROOT)
    out, nbs = (args.out or ROOT / "docs").resolve(), (args.nbs or ROOT / "nbs").resolve()
    os.chdir(ROOT)  # nbdev finds settings.ini from the working directory
    try:
        build(nbs, out, args.workers)
    except (DocsError, ImportError) as e:  # ImportError: `make venv` (or pip install -r requirements.lock.txt)
        print(f"\nbuild_docs: error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
