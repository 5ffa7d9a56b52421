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

# Bar charts' default ylim: accuracies up to 1, and room above for a label at 1.0
HEADROOM = (0, 1.12)


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
                (img.squeeze(-1) if img.shape[-1] == 1 else img).numpy(),
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


def attack_panel(
    model,
    x: Tensor,
    x_adv: Tensor,
    classes: Sequence[str],
    *,
    amplify: float | None = None,
) -> Figure:
    """Per row: the clean image, the perturbation (amplified to the full grey
    range), the adversarial image, and both predicted class distributions."""
    import torch

    with torch.no_grad():
        p_clean = torch.softmax(model(x), 1).cpu()
        p_adv = torch.softmax(model(x_adv), 1).cpu()
    delta = (x_adv - x).detach().cpu()
    scale = amplify or 0.5 / max(delta.abs().max().item(), 1e-12)
    n = len(x)
    fig = new_figure((8, 1.6 * n))
    axes = fig.subplots(
        n, 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 2.2]}
    )

    def show(ax, img: Tensor, title: str) -> None:
        ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    ticks = range(p_clean.shape[1])
    for i in range(n):
        show(axes[i, 0], x[i].cpu(), f"clean: {classes[p_clean[i].argmax()]}")
        show(
            axes[i, 1],
            (0.5 + scale * delta[i]).clamp(0, 1),
            f"perturbation x{scale:.0f}",
        )
        show(
            axes[i, 2],
            x_adv[i].detach().cpu(),
            f"adversarial: {classes[p_adv[i].argmax()]}",
        )
        ax = axes[i, 3]
        ax.bar([t - 0.2 for t in ticks], p_clean[i].numpy(), width=0.4, label="clean")
        ax.bar(
            [t + 0.2 for t in ticks], p_adv[i].numpy(), width=0.4, label="adversarial"
        )
        ax.set_xticks(list(ticks), classes, fontsize=7)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="y", labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
            ax.set_title("class probabilities", fontsize=8)
    fig.tight_layout()
    return fig


def curves(
    x_values: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    xlabel: str = "eps",
    ylabel: str = "accuracy",
    title: str = "",
    ylim: tuple[float, float] | None = (0, 1.01),
) -> Figure:
    """One line per named series over shared x values (e.g. accuracy vs eps); the
    legend sits beside the axes, where it cannot hide a curve."""
    fig = new_figure((7.5, 3))
    ax = fig.subplots()
    for name, values in series.items():
        ax.plot(x_values, values, "o-", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    _legend_beside(ax)
    fig.tight_layout()
    return fig


def histories(
    runs: dict[str, list[dict]], keys: dict[str, str], *, title: str = ""
) -> Figure:
    """Per-epoch curves of training runs: a line per run and per history key (`keys`:
    label -> a key of `training.fit`'s rows), over each run's own epochs."""
    fig = new_figure((7.5, 3))
    ax = fig.subplots()
    for run, rows in runs.items():
        for label, key in keys.items():
            epochs = [row["epoch"] for row in rows]
            ax.plot(epochs, [row[key] for row in rows], "o-", label=f"{run}: {label}")
    ax.set(xlabel="epoch", ylabel="accuracy", title=title, ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    _legend_beside(ax)
    fig.tight_layout()
    return fig


def bars(
    values: dict[str, float],
    *,
    ylabel: str = "accuracy",
    title: str = "",
    ylim: tuple[float, float] | None = HEADROOM,
) -> Figure:
    """A bar per named value, labelled with the value (the default ylim leaves the
    label of a bar at 1.0 room below the title)."""
    fig = new_figure((min(8, 1.2 + 1.1 * len(values)), 3))
    ax = fig.subplots()
    bars_ = ax.bar(list(values), list(values.values()), color="tab:blue")
    ax.bar_label(bars_, fmt="%.2f", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if ylim is not None:
        _accuracy_axis(ax, ylim)
    ax.tick_params(axis="x", labelsize=8)
    for label in ax.get_xticklabels():
        label.set(rotation=20, horizontalalignment="right")
    fig.tight_layout()
    return fig


def grouped_bars(
    table: dict[str, dict[str, float]],
    *,
    ylabel: str = "accuracy",
    title: str = "",
    ylim: tuple[float, float] | None = HEADROOM,
) -> Figure:
    """Bars grouped by row of `table` ({group: {series: value}}), labelled; the
    legend beside the axes."""
    groups = list(table)
    series = list(dict.fromkeys(k for row in table.values() for k in row))
    width = 0.8 / max(len(series), 1)
    fig = new_figure((min(10, 3.5 + 1.4 * len(groups)), 3))
    ax = fig.subplots()
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        values = [table[g].get(name, 0.0) for g in groups]
        ax.bar_label(
            ax.bar(xs, values, width=width, label=name), fmt="%.2f", fontsize=7
        )
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    for label in ax.get_xticklabels():
        label.set(rotation=15, horizontalalignment="right")
    ax.set(ylabel=ylabel, title=title)
    if ylim is not None:
        _accuracy_axis(ax, ylim)
    _legend_beside(ax)
    fig.tight_layout()
    return fig


def _legend_beside(ax) -> None:
    """The legend to the right of the axes, outside them: it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              fontsize=8)  # fmt: skip


def _accuracy_axis(ax, ylim: tuple[float, float]) -> None:
    """ylim, with ticks only up to 1 when the top above 1 is headroom for labels."""
    ax.set_ylim(*ylim)
    if ylim[1] > 1:
        ax.set_yticks([t for t in ax.get_yticks() if ylim[0] <= t <= 1])
