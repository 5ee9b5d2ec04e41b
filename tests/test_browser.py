"""The quick-start notebook in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium, Playwright.

Runs every cell of ``notebooks/01_quickstart.ipynb`` (a fresh copy, without its
saved outputs and widget state) and checks what the ``%%core4 --chunks 64``
cell's live panel finally draws: a full green bar, 64 of 64 chunks complete in
its label and counts table, and the next cell's printed result. A screenshot of
the finished panel goes to ``artifacts/browser/quickstart.png``. Then a cell added
at the end prints while its chunks wait: its lines show, one collapsible pane
per chunk, before the chunks finish (``live-output.png``, ``live-output-done.png``).

Never ``playwright install``: the test drives ``/usr/bin/chromium`` (``.ci/run``
installs it with apt) and is skipped only when that is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.lab import LabServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "01_quickstart.ipynb"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
BAR = ".jp-OutputArea-output .widget-hprogress"
RESULT = "64 chunks, 78498 primes below 1000000"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

# The notebook panel as JupyterLab knows it (expose_app_in_browser=True gives window.jupyterapp).
KERNEL_IDLE = "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
# Every code cell ran (has an execution count) and the kernel is idle again: run-all is over.
ALL_RAN = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(c => c.model.type === 'code');
    return panel.sessionContext.session?.kernel?.status === 'idle'
        && cells.length > 0 && cells.every(c => c.model.executionCount);
}"""
# Error outputs of any cell, as text, so a failing cell shows its traceback in the test report.
ERRORS = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(c => c.model.type === 'code')
    .flatMap(c => c.model.outputs.toJSON())
    .filter(o => o.output_type === 'error')
    .map(o => `${o.ename}: ${o.evalue}`)"""


def fresh_copy(src: Path, dst: Path) -> Path:
    """The notebooks without saved outputs and widget state.

    Lab would restore the saved widget state: the committed notebook's panels,
    already finished and green, would be on the page before anything ran.
    """
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    path = dst / NOTEBOOK
    nb = json.loads(path.read_text())
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(nb, indent=1))
    return dst


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabServer]:
    home = tmp_path / "core4nb-home"  # the kernel's embedded queue and key: this test's own
    home.mkdir()
    server = LabServer(tmp_path / "lab", fresh_copy(ROOT / "notebooks", tmp_path / "notebooks"),
                       {"CORE4NB_HOME": str(home), "CORE4NB_KEY_FILE": str(home / "key")})
    try:
        yield server.start()
    finally:
        leftovers = _descendants(server)
        server.stop()
        _reap(leftovers)  # only if the test failed before its own check: never leave processes behind


def _descendants(server: LabServer) -> list[psutil.Process]:
    """The server's kernels and everything they started (worker nodes run in their own sessions)."""
    if server.proc is None or server.proc.poll() is not None:
        return []
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(server.proc.pid).children(recursive=True)
    return []


def _reap(procs: list[psutil.Process], timeout: float = 20.0) -> list[str]:
    """Wait for ``procs`` to exit; SIGKILL (by pid) and describe those that did not."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    described = []
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append(f"{proc.pid}: {' '.join(_cmdline(proc))}")
            proc.kill()
    return described


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # exited meanwhile
        return []


def _on_failure(page: Page, lab: LabServer) -> str:
    """What to look at when a wait times out: a screenshot, cell errors and the server log."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        page.screenshot(path=ARTIFACTS / "quickstart-failure.png")
    errors = []
    with contextlib.suppress(Exception):
        errors = page.evaluate(ERRORS)
    log = (lab.workdir / "lab.log").read_text(errors="replace")[-3000:]
    return f"cell errors: {errors}; screenshot {ARTIFACTS / 'quickstart-failure.png'}; lab.log tail:\n{log}"


# A cell added at the end of the notebook and run: what its chunks print while they wait for RELEASE.
LIVE_CELL = """%%core4 --chunks 4 --over bounds --out live
import os, time
print('first bound', bounds[0], flush=True)
while not os.path.exists({release!r}):
    time.sleep(0.05)
print('released', bounds[0])
len(bounds)"""
ADD_AND_RUN = """source => {
    const nb = window.jupyterapp.shell.currentWidget.content;
    nb.model.sharedModel.insertCell(nb.model.cells.length, {cell_type: 'code', source});
    nb.activeCellIndex = nb.model.cells.length - 1;
    window.jupyterapp.commands.execute('notebook:run-cell');
}"""


def _check_live_output(page: Page, lab: LabServer) -> None:
    """A running cell shows its chunks' lines, a collapsible pane per chunk, before they finish; a pane
    the user opened stays open as lines arrive."""
    release = lab.workdir / "release"
    page.evaluate(ADD_AND_RUN, LIVE_CELL.format(release=str(release)))
    cell = page.locator(".jp-CodeCell", has_text="--chunks 4 --over bounds --out live")
    header = ".jupyter-widget-Collapse-header"
    for chunk in (1, 2):  # the two running on the machine's two slots; chunks 3 and 4 wait for a slot
        cell.locator(header, has_text=f"chunk {chunk}/4 · 1 line").wait_for(timeout=90_000)
    assert cell.locator(".widget-hprogress .progress-bar-info").count() == 1  # still running: the lines came live
    cell.locator(header, has_text="chunk 2/4").click()
    opened = cell.locator(".jupyter-widget-Collapse-open pre")
    opened.wait_for(timeout=10_000)
    assert opened.inner_text().strip() == "first bound (250001, 265626)"  # chunk 2 starts at bounds[16]
    cell.evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "live-output.png")
    release.touch()
    cell.locator(".widget-hprogress .progress-bar-success").wait_for(timeout=60_000)
    for chunk in range(1, 5):
        cell.locator(header, has_text=f"chunk {chunk}/4 · 2 lines").wait_for(timeout=30_000)
    # The pane opened while running stayed open, and holds the lines that came since.
    assert opened.inner_text().strip() == "first bound (250001, 265626)\nreleased (250001, 265626)"
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "live-output-done.png")


def test_quickstart_panel_in_jupyterlab(lab: LabServer) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            try:
                page.goto(f"{lab.base}/lab/tree/{NOTEBOOK}?reset&token={lab.token}")
                page.wait_for_function(KERNEL_IDLE, timeout=90_000)
                # Fire and forget: the command's promise settles only when every cell has run.
                page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

                cell = page.locator(".jp-CodeCell", has_text="%%core4 --chunks 64 --over numbers --out counts")
                panel = cell.locator(".jp-OutputArea-output .widget-vbox").first
                panel.locator(".widget-hprogress .progress-bar-success").wait_for(timeout=90_000)
                bar = panel.locator(".widget-hprogress .progress-bar")
                assert bar.evaluate("e => e.style.width") == "100%"
                # The label beside the bar (first HTML of the bar's row), and the counts table.
                label = panel.locator(".widget-hbox .widget-html").first
                assert label.inner_text().startswith("64/64 chunks · complete"), label.inner_text()
                states = panel.locator("table.core4nb-counts td[data-state]")
                counts = dict(zip(states.evaluate_all("tds => tds.map(td => td.dataset.state)"),
                                  states.all_inner_texts(), strict=True))
                assert counts["complete"] == "64", counts
                assert all(n == "0" for state, n in counts.items() if state != "complete"), counts

                page.locator(".jp-OutputArea-output", has_text=RESULT).wait_for(timeout=60_000)
                page.wait_for_function(ALL_RAN, timeout=90_000)
                assert page.evaluate(ERRORS) == []
                # The later --reduce cell's panel may lag its result by a poll (its root finishes last):
                # every panel final before the screenshot and the shutdown, and none of them red.
                page.wait_for_function(f"() => !document.querySelector('{BAR} .progress-bar-info')", timeout=30_000)
                assert page.locator(f"{BAR} .progress-bar-danger").count() == 0
                assert page.locator(f"{BAR} .progress-bar-success").count() == page.locator(BAR).count()
            except Exception as exc:
                raise AssertionError(f"{exc}\n{_on_failure(page, lab)}") from exc

            # The screenshot of the finished panel, in the middle of the viewport.
            panel.evaluate("e => e.scrollIntoView({block: 'center'})")
            page.wait_for_timeout(300)  # let Lab's windowed notebook render what came into view
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / "quickstart.png")
            try:
                _check_live_output(page, lab)
            except Exception as exc:
                raise AssertionError(f"{exc}\n{_on_failure(page, lab)}") from exc
        finally:
            browser.close()

    # The kernel is the venv's Python (the one running the tests and the server).
    procs = _descendants(lab)
    kernels = [_cmdline(proc) for proc in procs if "ipykernel_launcher" in _cmdline(proc)]
    assert len(kernels) == 1, kernels
    venv_bin = Path(sys.executable).parent  # python or python3: the same venv either way
    assert Path(kernels[0][0]).parent == venv_bin, f"the notebook kernel runs {kernels[0][0]}, not {venv_bin}/python"
    assert any(_cmdline(proc)[1:4] == ["-m", "core4nb", "worker"] for proc in procs), "no local worker node?"

    # Terminating the server shuts its kernel down; the kernel stops its worker node.
    lab.stop()
    left = _reap(procs)
    assert not left, f"processes outlived the server: {left}"
