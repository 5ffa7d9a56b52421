"""Progress bars that leave a one-line summary, never a widget or a frozen bar.

`tqdm.auto` in a notebook draws an ipywidgets bar. Closed (`leave=False`), the
widget is gone when the notebook is reopened ("Error displaying widget: model not
found"); run by papermill, with no frontend to update it, it is saved as its first
frame ("0%| 0/550"). `bar` draws where someone watches and keeps only a summary:

- in a kernel with a live frontend (`widgets.has_frontend`): the tqdm widget bar,
  replaced when the loop ends by its one-line summary;
- in a kernel without one (papermill, nbconvert): no bar, the summary at the end;
- outside a kernel (a terminal, a log file): tqdm's text bar, as usual.

Only the outermost loop leaves its summary ("worst case: 2/2 batch in 00:35
(17.5s/batch)"); a loop inside it (the batches of an epoch) leaves nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.std import tqdm

T = TypeVar("T")
SUMMARY = "{desc}: {n_fmt}/{total_fmt} {unit} in {elapsed} ({rate_fmt})"
_open = [0]  # bars running now in this process: the first one is the outermost


class Summary:
    """A line of text with only a text/plain representation."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def bar(
    iterable: Iterable[T],
    *,
    desc: str,
    disable: bool = False,
    unit: str = "it",
) -> Iterator[T]:
    """Iterate `iterable` with a progress bar (see the module docstring).

    Args:
        desc: What the loop does ("worst case", "epochs").
        disable: No bar and no summary (the library's `progress=False`).
        unit: What one item is ("batch", "epoch").
    """
    if disable:
        yield from iterable
        return
    leave = not _open[0]
    _open[0] += 1
    try:
        if _kernel_shell() is None:  # a terminal or a log: tqdm's own text bar
            yield from tqdm(iterable, desc=desc, leave=leave, unit=unit)
        else:
            yield from _in_kernel(iterable, desc, unit, leave)
    finally:
        _open[0] -= 1


def _in_kernel(iterable: Iterable[T], desc: str, unit: str, leave: bool):
    """The bar in a Jupyter kernel: for the outermost loop, a widget while a
    frontend watches, then the summary in its place; inner loops show nothing."""
    if not leave:  # an inner loop: the outer one's bar says how far it is
        yield from iterable
        return
    total = len(iterable) if hasattr(iterable, "__len__") else None
    from IPython.display import display

    from robustkit.widgets import has_frontend

    handle, widget = None, None
    if has_frontend():
        from tqdm.notebook import tqdm as notebook_tqdm

        widget = notebook_tqdm(total=total, desc=desc, unit=unit, display=False)
        handle = display(widget.container, display_id=True)
    start, n = time.perf_counter(), 0
    try:
        for item in iterable:
            yield item
            n += 1
            if widget is not None:
                widget.update(1)
    finally:
        elapsed = time.perf_counter() - start
        line = tqdm.format_meter(
            n, total, elapsed, prefix=desc, unit=unit, bar_format=SUMMARY
        )
        if widget is not None:
            widget.container.close()  # the frontend drops the view; nothing saved
            widget.disable = True  # tqdm's own close must not draw it again
        if handle is not None:
            handle.update(Summary(line))
        else:
            display(Summary(line))


def _kernel_shell():
    """The IPython shell if this runs in a Jupyter kernel, else None."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    return shell if getattr(shell, "kernel", None) is not None else None
