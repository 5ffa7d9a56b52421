"""The widgets as a learner uses them: JupyterLab driven by headless Chromium.

Notebooks 01, 03 and 05 at their quick parameters (injected as papermill does) are
opened in JupyterLab, run with Run > Run All Cells, and their explorers moved with
the mouse and keyboard: the figure must change, no cell may show an error,
"Loading widget" or a leftover progress bar, and the notebook, saved, its kernel
shut down and reopened, must show its widgets again without errors. Screenshots
go to $ROBUSTKIT_ARTIFACTS/browser (CI uploads it), else to the test's tmp dir.
Skipped where Debian's chromium is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import labserver
import nbformat
import papermill
import pytest

from robustkit.course import runner

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium is not installed (apt-get install chromium)",
    ),
    pytest.mark.notebook,  # minutes: scheduled with the notebook runs
]
playwright = pytest.importorskip("playwright.sync_api")

NOTEBOOKS = ("01_adversarial_examples", "03_adversarial_training",
             "05_input_transformations")  # fmt: skip
SETTINGS = {  # this server's user settings (the project's overrides apply as well)
    "@jupyterlab/notebook-extension/tracker": {
        "windowingMode": "none",  # every cell in the page, not only those in view
        "autoStartDefaultKernel": True,  # no "Select Kernel" dialog
    },
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the tab in view
PROMPTS = f"{NOTEBOOK} .jp-CodeCell .jp-InputPrompt"
SETTLED = """() => {
    const busy = document.querySelector(
        ".jp-Notebook-ExecutionIndicator[data-status='busy']");
    const prompts = [...document.querySelectorAll("PROMPTS")];
    return !busy && prompts.some(p => /\\[\\d+\\]/.test(p.textContent))
        && !prompts.some(p => p.textContent.includes('*'));
}""".replace("PROMPTS", PROMPTS)
STARTED = """() => [...document.querySelectorAll("PROMPTS")]
    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""".replace("PROMPTS", PROMPTS)
PROBLEMS = ("Error displaying widget", "Loading widget", "Traceback")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    root = os.environ.get("ROBUSTKIT_ARTIFACTS")
    folder = Path(root) / "browser" if root else tmp_path_factory.mktemp("browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-lab")
    for stem in NOTEBOOKS:
        source = runner.NOTEBOOK_DIR / f"{stem}.ipynb"
        papermill.execute_notebook(
            str(source),
            str(root / source.name),
            parameters=runner.parameter_set(source, "quick"),
            prepare_only=True,
            kernel_name="python3",
            progress_bar=False,
        )
    settings = tmp_path_factory.mktemp("browser-settings")
    workspaces = tmp_path_factory.mktemp("browser-workspaces")
    for name, values in SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    log = root.parent / "browser-lab.log"
    options = (f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={workspaces}")  # fmt: skip
    with labserver.serve(root, log, *options) as server:
        server.root = root
        yield server


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_notebook(browser, lab, name: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab.base}/lab/tree/{name}?reset&token={lab.token}")  # this one only
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=60_000)
    page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
    )
    return page


def run_all(page, shots: Path, name: str, timeout_s: int) -> None:
    """Run > Run All Cells; wait until the kernel is idle with nothing queued, then
    require every code cell to have run (Run All stops at the first error)."""
    for _ in range(3):  # a click before the kernel is connected does nothing
        page.wait_for_selector(".jp-StatusBar-TextItem:has-text('| Idle')")
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(STARTED, timeout=30_000, polling=250)
            break
        except playwright.TimeoutError:
            continue
    try:
        page.wait_for_function(SETTLED, timeout=timeout_s * 1000, polling=1000)
    finally:
        page.screenshot(path=str(shots / f"{Path(name).stem}-run-all.png"))
    prompts = page.locator(PROMPTS).all_inner_texts()
    unrun = [i for i, p in enumerate(prompts) if not any(c.isdigit() for c in p)]
    assert not unrun, (
        f"code cells {unrun} did not run: " + page.inner_text(NOTEBOOK)[-3000:]
    )


def assert_clean(page, when: str) -> None:
    """No error, no widget that failed or is still loading, no progress bar left."""
    text = page.inner_text(NOTEBOOK)
    found = [p for p in PROBLEMS if p in text]
    assert not found, f"{when}: the notebook shows {found}"
    bars = page.locator(f"{NOTEBOOK} .jp-OutputArea .widget-hprogress").count()
    assert bars == 0, f"{when}: {bars} progress bar(s) left in the outputs"


def figure_of(explorer) -> str:
    """The explorer's current figure: its PNG as a data URL."""
    return explorer.locator(".widget-output img").first.get_attribute("src")


def wait_for_new_figure(page, explorer, before: str, what: str) -> str:
    for _ in range(240):
        now = figure_of(explorer)
        if now and now != before:
            return now
        page.wait_for_timeout(250)
    raise AssertionError(f"the figure did not change after {what}")


def set_slider(explorer, description: str, value: float) -> None:
    """Type a value into a slider's readout, as a learner can, and press Enter."""
    slider = explorer.locator(".widget-slider", has_text=description).first
    readout = slider.locator(".widget-readout")
    readout.click()
    readout.press("Control+a")
    readout.type(f"{value:g}")
    readout.press("Enter")


def assert_labels_fit(explorer) -> None:
    """Every dropdown is wide enough for its longest option (text vs box width)."""
    cut = explorer.evaluate("""root => [...root.querySelectorAll("select")]
        .filter(s => {
        const ctx = document.createElement("canvas").getContext("2d");
        ctx.font = getComputedStyle(s).font;
        const widths = [...s.options].map(o => ctx.measureText(o.text).width);
        return Math.max(...widths) > s.clientWidth - 24;  // the arrow's room
    }).map(s => s.value)""")
    assert not cut, f"dropdown labels cut off: {cut}"


def save_close_reopen(browser, page, lab, name: str, shots: Path):
    """Save, shut the kernel down, reopen: the widgets come back from saved state."""
    page.keyboard.press("Control+s")
    page.wait_for_function(
        "() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", timeout=60_000
    )
    page.close()
    for session in lab.get("/api/sessions"):
        lab.get(f"/api/sessions/{session['id']}", "DELETE")
    saved = json.loads((lab.root / name).read_text())
    assert saved["metadata"]["widgets"], "the saved notebook holds no widget state"
    assert not [o for c in saved["cells"] for o in c.get("outputs", [])
                if o["output_type"] == "error"]  # fmt: skip
    page = open_notebook(browser, lab, name)
    page.wait_for_timeout(3_000)  # time to fail to render, if it would
    page.screenshot(path=str(shots / f"{Path(name).stem}-reopened.png"))
    assert_clean(page, "reopened")
    return page


def explorer_with(page, control: str):
    """The explorer whose controls include a dropdown described `control`."""
    box = page.locator(f"{NOTEBOOK} .widget-vbox", has=page.locator(".widget-dropdown",
                                                         has_text=control))  # fmt: skip
    box.first.scroll_into_view_if_needed()
    return box.first


def ran(browser, lab, shots, name: str, timeout_s: int = 300):
    """Notebook `name` opened and run in a new page, checked clean; the page."""
    page = open_notebook(browser, lab, name)
    run_all(page, shots, name, timeout_s=timeout_s)
    assert_clean(page, "after Run All")
    return page


def explorer_ready(page, control: str):
    """The explorer with a dropdown `control`, its labels checked; it, its figure."""
    explorer = explorer_with(page, control)
    assert_labels_fit(explorer)
    return explorer, figure_of(explorer)


def test_the_attack_explorer_responds_to_eps_and_attack(browser, lab, shots):
    name = "01_adversarial_examples.ipynb"
    page = ran(browser, lab, shots, name)
    explorer, first = explorer_ready(page, "attack")
    explorer.screenshot(path=str(shots / "01-explorer-opened.png"))
    set_slider(explorer, "eps", 0.25)
    second = wait_for_new_figure(page, explorer, first, "setting eps to 0.25")
    explorer.locator("select").select_option(index=1)
    wait_for_new_figure(page, explorer, second, "choosing the second attack")
    explorer.screenshot(path=str(shots / "01-explorer-moved.png"))
    page = save_close_reopen(browser, page, lab, name, shots)
    reopened = explorer_with(page, "attack")  # from the saved widget state
    assert reopened.locator("select").count() == 1 and figure_of(reopened)
    page.close()


def test_the_defense_explorer_responds_to_transform_and_strength(browser, lab, shots):
    name = "05_input_transformations.ipynb"
    page = ran(browser, lab, shots, name)
    explorer, first = explorer_ready(page, "transform")
    meaning = explorer.locator(".widget-label", has_text=re.compile(r"strength \d"))
    assert "strength 0.50" in meaning.inner_text()
    explorer.locator("select").select_option(index=1)
    second = wait_for_new_figure(page, explorer, first, "choosing the second transform")
    set_slider(explorer, "strength", 0.8)
    wait_for_new_figure(page, explorer, second, "setting strength to 0.8")
    assert "strength 0.80" in meaning.inner_text()
    explorer.screenshot(path=str(shots / "05-explorer-moved.png"))
    save_close_reopen(browser, page, lab, name, shots).close()


def test_adversarial_training_runs_with_live_monitors(browser, lab, shots):
    name = "03_adversarial_training.ipynb"
    started = time.monotonic()
    page = ran(browser, lab, shots, name, timeout_s=900)
    print(f"03 opened and ran in the browser in {time.monotonic() - started:.0f} s")
    page.screenshot(path=str(shots / "03-ran.png"), full_page=True)
    save_close_reopen(browser, page, lab, name, shots).close()


def test_the_site_renders_offline_without_solutions(browser, tmp_path, shots):
    """`make html`'s pages in the browser with the network off: every equation of
    notebook 01's prose typeset by the local MathJax, the figure shown, no request
    leaving the folder, no solution code."""
    from test_tooling import executed_notebook

    from robustkit.course import html

    nb = executed_notebook()
    source = runner.NOTEBOOK_DIR / "01_adversarial_examples.ipynb"
    prose = [c for c in nbformat.read(source, as_version=4).cells
             if c.cell_type == "markdown"]  # fmt: skip
    hidden = [
        nbformat.v4.new_code_cell(f"{name} = 42", metadata={"tags": [tag]})
        for name, tag in (("SOLUTION", "solution"), ("ANSWERS", "answer-key"))
    ]
    nb.cells = [*prose, *hidden, *nb.cells]  # fmt: skip
    src = tmp_path / "outputs"
    src.mkdir()
    nbformat.write(nb, src / source.name)
    index = html.build(src, tmp_path / "site")

    context = browser.new_context(offline=True)
    outside = []
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("file://")
            else (outside.append(route.request.url), route.abort())
        ),
    )
    page = context.new_page()
    page.goto(index.as_uri())
    page.click("a:text-is('01 · Adversarial examples')")
    page.wait_for_function(
        "() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0"
        " && document.querySelectorAll('.MathJax, .MathJax_CHTML').length > 0",
        timeout=60_000,
    )
    page.screenshot(path=str(shots / "site-01.png"), full_page=True)
    text = page.inner_text("body")
    raw = [t for t in ("$$", "\\epsilon", "\\max", "\\delta", "Math Processing Error")
           if t in text]  # fmt: skip
    assert not raw, f"TeX left unrendered: {raw}"
    typeset = page.locator(".MathJax, .MathJax_CHTML").count()
    scripts = page.locator("script[type^='math/tex']").count()
    assert typeset >= scripts > 10, (typeset, scripts)
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and min(widths) > 0, f"images not shown: {widths}"
    assert "SOLUTION" not in text and "ANSWERS" not in text and "Run with" in text
    assert not outside, f"the page asked for {outside}"
    context.close()
