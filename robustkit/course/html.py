"""A static site of the executed notebooks: one HTML page each, and an index.

    make run && python -m robustkit.course.html  # outputs/*.ipynb -> outputs/html/
    python -m robustkit.course.html --src outputs/sweep/runs/000 --out site

Pages are rendered by nbconvert's HTML exporter with every image embedded, and
MathJax copied beside them (from jupyter-server-mathjax), so the folder renders
offline, copied or served as is. Solution cells (tagged `solution`) and answer
keys (tagged `answer-key`) are left out: the site is for students. Every page and
the index say which parameters ran (teaching defaults, the quick set, or what was
changed), on which dataset and device, and when. Live widgets need a kernel, so
widget views are dropped from the pages (an explorer keeps the static figure it
shows without a frontend). A results JSON beside a notebook is copied and linked
from the index. MathJax is told to use the fonts its local copy has (STIX-Web).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
from pathlib import Path

import nbformat

from robustkit.course.assignments import ANSWER_KEY_TAG, SOLUTION_TAG
from robustkit.course.runner import OUTPUT_DIR, parameter_set

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MATHJAX = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # local copy
# The local copy has only the STIX-Web fonts: without this, MathJax asks for its TeX
# fonts, which are not there, and shows "[Math Processing Error]" for some symbols.
MATHJAX_FONTS = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null,
                                 webFont: "STIX-Web", imageFont: null}});
</script>
"""


def title(nb: nbformat.NotebookNode, default: str) -> str:
    """The first level-1 markdown heading of `nb`, else `default`."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return default


def strip_widgets(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop widget views (dead without a kernel); keep any static alternative."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                data.pop(WIDGET_VIEW)
                if set(data) <= {"text/plain"}:
                    continue  # only the widget's repr was left, e.g. "HBox(...)"
            kept.append(output)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return nb


def run_line(nb: nbformat.NotebookNode, results: dict | None = None) -> str:
    """What ran, in one line: the parameter set, dataset, device and date."""
    run = nb.metadata.get("papermill", {})
    given = {k: v for k, v in (run.get("parameters") or {}).items()
             if k != "RESULTS_PATH"}  # fmt: skip
    source = Path(run.get("input_path") or "unknown.ipynb")
    quick = {}
    if source.with_name(f"{source.stem}.quick.yaml").exists():
        quick = parameter_set(source, "quick")
    if not given:
        which = "teaching defaults"
    elif quick and quick.items() <= given.items():
        extra = {k: v for k, v in given.items() if k not in quick}
        which = "the quick parameters" + (f" and {extra}" if extra else "")
    else:
        which = f"parameters {given}"
    provenance = (results or {}).get("provenance") or {}
    dataset = provenance.get("dataset") or given.get("DATASET", "the default dataset")
    device = provenance.get("device", "an unrecorded device")
    end = run.get("end_time")
    when = f"{end[:16].replace('T', ' ')} UTC" if end else "at an unrecorded time"
    return f"Run with {which}, on {dataset}, on {device}, finished {when}."


def render(
    notebook: str | Path, out_dir: str | Path, results: dict | None = None
) -> tuple[Path, str]:
    """Write `notebook` as `out_dir/<stem>.html`, solutions and answers left out, the
    run line (`run_line`) on top; return the page and its title."""
    from nbconvert import HTMLExporter  # heavy import, only for the site
    from nbconvert.preprocessors import TagRemovePreprocessor

    notebook, out_dir = Path(notebook), Path(out_dir)
    nb = strip_widgets(nbformat.read(notebook, as_version=4))
    page_title = title(nb, notebook.stem)
    line = run_line(nb, results)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"*{line}*"))
    exporter = HTMLExporter(template_name="lab", embed_images=True, mathjax_url=MATHJAX)
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG, ANSWER_KEY_TAG}),
        enabled=True,
    )
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": page_title}}
    )
    # require.js only serves live widgets, which the pages do not have: no CDN
    body = body.replace(f'<script src="{exporter.require_js_url}"></script>', "")
    body = body.replace(
        f'<script src="{MATHJAX}"', MATHJAX_FONTS + f'<script src="{MATHJAX}"'
    )
    page = out_dir / f"{notebook.stem}.html"
    page.write_text(body, encoding="utf-8")
    return page, page_title


def copy_mathjax(out_dir: Path) -> Path:
    """MathJax 2.7 from the jupyter-server-mathjax package, into out_dir/mathjax."""
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(static, out_dir / "mathjax", dirs_exist_ok=True)
    return out_dir / "mathjax"


def build(src: str | Path = OUTPUT_DIR, out: str | Path | None = None) -> Path:
    """Render every notebook in `src` into `out` (default src/html); return index."""
    src = Path(src)
    out = Path(out) if out is not None else src / "html"
    notebooks = sorted(src.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no executed notebooks in {str(src)!r}: run `make run` first")
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    items = []
    for notebook in notebooks:
        path = notebook.with_suffix(".json")
        results = json.loads(path.read_text()) if path.exists() else None  # valid
        page, page_title = render(notebook, out, results)
        item = f'<li><a href="{page.name}">{html.escape(page_title)}</a>'
        if results is not None:
            shutil.copyfile(path, out / path.name)
            item += f' (<a href="{path.name}">results</a>)'
        line = run_line(nbformat.read(notebook, as_version=4), results)
        items.append(item + f"<br><small>{html.escape(line)}</small></li>")
    index = out / "index.html"
    index.write_text(_INDEX.format(items="\n".join(items)), encoding="utf-8")
    return index


_INDEX = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>robustkit notebooks</title>
<style>body {{font-family: sans-serif; max-width: 40em; margin: 2em auto;}}</style>
</head>
<body>
<h1>robustkit notebooks</h1>
<ol>
{items}
</ol>
</body>
</html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--src", type=Path, default=OUTPUT_DIR, help="executed notebooks"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: SRC/html")
    args = parser.parse_args(argv)
    print(f"wrote {build(args.src, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
