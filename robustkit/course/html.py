"""A static site of the executed notebooks: one HTML page each, and an index.

    make run && python -m robustkit.course.html  # outputs/*.ipynb -> outputs/html/
    python -m robustkit.course.html --src outputs/sweep/runs/000 --out site

Pages are rendered by nbconvert's HTML exporter with every image embedded, so the
folder can be copied or served as is. Live widgets need a kernel, so widget views
are dropped from the pages (progress bars vanish; an explorer keeps the static
figure it shows without a frontend). A results JSON beside a notebook is copied
and linked from the index.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
from pathlib import Path

import nbformat

from robustkit.course.runner import OUTPUT_DIR

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


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


def render(notebook: str | Path, out_dir: str | Path) -> tuple[Path, str]:
    """Write `notebook` as `out_dir/<stem>.html`; return the page and its title."""
    from nbconvert import HTMLExporter  # heavy import, only for the site

    notebook, out_dir = Path(notebook), Path(out_dir)
    nb = strip_widgets(nbformat.read(notebook, as_version=4))
    page_title = title(nb, notebook.stem)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": page_title}}
    )
    page = out_dir / f"{notebook.stem}.html"
    page.write_text(body, encoding="utf-8")
    return page, page_title


def build(src: str | Path = OUTPUT_DIR, out: str | Path | None = None) -> Path:
    """Render every notebook in `src` into `out` (default src/html); return index."""
    src = Path(src)
    out = Path(out) if out is not None else src / "html"
    notebooks = sorted(src.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"no executed notebooks in {str(src)!r}: run `make run` first")
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for notebook in notebooks:
        page, page_title = render(notebook, out)
        item = f'<li><a href="{page.name}">{html.escape(page_title)}</a>'
        results = notebook.with_suffix(".json")
        if results.exists():
            json.loads(results.read_text())  # refuse to publish a broken record
            shutil.copyfile(results, out / results.name)
            item += f' (<a href="{results.name}">results</a>)'
        items.append(item + "</li>")
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
