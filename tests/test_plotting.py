"""Figures: the per-epoch curves, and text that every font can draw."""

from __future__ import annotations

from matplotlib import font_manager, ft2font

from robustkit import plotting
from robustkit.course import runner
from robustkit.utils import ROOT


def rows(values):
    return [
        dict(epoch=e + 1, train_accuracy=v, val=v / 2) for e, v in enumerate(values)
    ]


def test_histories_draws_a_line_per_run_and_key_over_its_own_epochs():
    fig = plotting.histories(
        {"A": rows([0.1, 0.5, 0.9]), "B": rows([0.2, 0.4])},  # B stopped early
        {"train": "train_accuracy", "validation": "val"},
        title="two runs",
    )
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines) == ["A: train", "A: validation", "B: train", "B: validation"]
    assert list(lines["B: validation"].get_xdata()) == [1, 2]
    assert list(lines["A: validation"].get_ydata()) == [0.05, 0.25, 0.45]
    assert ax.get_title() == "two runs"
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 >= ax.bbox.x1 - 1


def test_every_character_of_the_notebooks_and_the_package_has_a_glyph():
    """No emoji or other character that a machine without an emoji font shows as a
    box: each non-ASCII character of the notebooks and of robustkit/ must be in
    DejaVu Sans, matplotlib's own font, which every install has."""
    font = ft2font.FT2Font(font_manager.findfont("DejaVu Sans"))
    files = [*runner.notebooks(), *sorted((ROOT / "robustkit").rglob("*.py")),
             ROOT / "README.md"]  # fmt: skip
    missing = {
        f"{path.name}: {char!r} (U+{ord(char):04X})"
        for path in files
        for char in set(path.read_text(encoding="utf-8"))
        if ord(char) > 127 and font.get_char_index(ord(char)) == 0
    }
    assert not missing, sorted(missing)
