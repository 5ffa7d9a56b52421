"""Figures. Every function returns a matplotlib Figure and never calls plt.show().

A notebook shows a figure by leaving it as a cell's value. Each figure is closed in
pyplot as soon as it is made, so Jupyter shows it exactly once and nothing piles up
in pyplot's registry.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty figure, already closed in pyplot (see the module docstring)."""
    fig = plt.figure(figsize=figsize)
    plt.close(fig)
    return fig


def image_grid(
    x: Tensor,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    scale: float = 1.0,
    cmap: str = "gray",
) -> Figure:
    """Show images x (N, C, H, W) in [0, 1] on a grid, with optional titles."""
    n = len(x)
    nrows = -(-n // ncols)
    fig = new_figure((scale * ncols, scale * 1.15 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = x[i].detach().cpu().float().clamp(0, 1).permute(1, 2, 0)
            ax.imshow(
                img.squeeze(-1) if img.shape[-1] == 1 else img,
                cmap=cmap,
                vmin=0,
                vmax=1,
            )
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def history(rows: list[dict]) -> Figure:
    """Loss and accuracy per epoch from a `training.fit` history."""
    epochs = [r["epoch"] for r in rows]
    fig = new_figure((8, 3))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    for key, label in [
        ("train_accuracy", "train"),
        ("test_accuracy", "test"),
        ("test_robust_accuracy", "test, robust"),
    ]:
        values = [r[key] for r in rows]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, values, "o-", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    ax_acc.legend()
    fig.tight_layout()
    return fig
