"""Interactive explorers (ipywidgets) and a live training monitor for JupyterLab.

    explorer = widgets.attack_explorer(model, x[:16], y[:16], classes)
    explorer  # sliders and dropdowns in JupyterLab; a static figure elsewhere

Each explorer holds its widgets in `.controls` and its current matplotlib Figure in
`.fig`; setting a control's value redraws it, so explorers can be driven from code
too. Shown in a live frontend (JupyterLab, Notebook, VS Code) an explorer is a
widget; shown anywhere else (papermill, nbconvert) it is the static figure of its
current state. ipywidgets is imported only when an explorer is built, so importing
this module needs no frontend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from matplotlib.figure import Figure
from torch import Tensor

from robustkit import attacks, plotting
from robustkit.types import Attack, Model

Transform = Callable[[Tensor], Tensor]


def has_frontend() -> bool:
    """Whether code runs in a kernel driven by a live, interactive frontend.

    A frontend that can answer `input()` (JupyterLab, Notebook, VS Code) sends
    allow_stdin with every execution; papermill and nbconvert do not. Outside a
    Jupyter kernel (scripts, pytest) the answer is False.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return bool(getattr(kernel, "_allow_stdin", False))


class Explorer:
    """Controls plus a render function (control values -> Figure), kept in sync.

    Attributes:
        controls: The ipywidgets by name; set `.value` to drive the explorer.
        fig: The Figure of the current control values.
    """

    def __init__(
        self,
        controls: dict,
        render: Callable[..., Figure],
        *,
        live: bool | None,
        notes: Sequence = (),
    ) -> None:
        self.controls, self._render, self._live = controls, render, live
        self._notes = list(notes)  # widgets shown under the controls (e.g. a Label)
        self._output = None
        for control in controls.values():
            control.observe(lambda change: self.update(), names="value")
        self.fig = self._render(**self.values())

    def values(self) -> dict:
        """The current value of every control, by name."""
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> Figure:
        """Redraw for the current control values (and in the widget, if shown)."""
        self.fig = self._render(**self.values())
        if self._output is not None:
            from IPython.display import clear_output, display

            with self._output:
                clear_output(wait=True)
                display(self.fig)
        return self.fig

    def figure(self) -> Figure:
        """The Figure of the current control values."""
        return self.fig

    def widget(self):
        """The ipywidgets box: the controls above the figure."""
        import ipywidgets as w

        if self._output is None:
            self._output = w.Output()
            self.update()
        return w.VBox(
            [
                w.HBox(list(self.controls.values()), layout={"flex_flow": "row wrap"}),
                *self._notes,
                self._output,
            ]
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        live = has_frontend() if self._live is None else self._live
        display(self.widget() if live else self.fig)


def attack_explorer(
    model: Model,
    x: Tensor,
    y: Tensor,
    classes: Sequence[str],
    *,
    attacks: dict[str, Callable[[float], Attack]] | None = None,
    eps_max: float = 0.5,
    live: bool | None = None,
) -> Explorer:
    """Pick an image, an attack and eps; see x, the perturbation and x_adv.

    Shows `plotting.attack_panel` for x[index] and x_adv = attack(eps)(model, x, y):
    the clean image, the perturbation (amplified), the adversarial image and both
    predicted class distributions. Put the model in eval mode first.

    Args:
        model: Maps inputs in [0, 1] to logits.
        x: Candidate images (N, C, H, W) in [0, 1].
        y: Their labels (N,).
        classes: Class names, indexed by label.
        attacks: Name -> (eps -> attack(model, x, y)); default FGSM and PGD-20.
        eps_max: Largest eps on the slider.
        live: Show the widget (True) or the static figure (False) when displayed;
            None asks `has_frontend()`.

    Returns:
        An Explorer with controls "index", "attack" and "eps".
    """
    import ipywidgets as w

    if not eps_max > 0:
        raise ValueError(f"eps_max must be > 0, got {eps_max!r}")
    makers = attacks or default_attacks()
    eps0 = min(0.1, eps_max)

    def render(index: int, attack: str, eps: float) -> Figure:
        xi, yi = x[index : index + 1], y[index : index + 1]
        x_adv = xi.clone() if eps == 0 else makers[attack](eps)(model, xi, yi)
        return plotting.attack_panel(model, xi, x_adv, classes)

    start = first_success(model, makers[next(iter(makers))](eps0), x, y)
    controls = {
        "index": w.IntSlider(value=start, min=0, max=len(x) - 1, description="image"),
        "attack": dropdown(list(makers), "attack"),
        "eps": w.FloatSlider(
            value=eps0,
            min=0.0,
            max=eps_max,
            step=eps_max / 50,
            description="eps",
            continuous_update=False,
        ),
    }
    return Explorer(controls, render, live=live)


def first_success(model: Model, attack: Attack, x: Tensor, y: Tensor) -> int:
    """The first index whose correctly classified image `attack` misclassifies
    (0 if none): an explorer should open on an attack that works."""
    x_adv = attack(model, x, y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    hits = (correct & fooled).nonzero()
    return int(hits[0]) if len(hits) else 0


def dropdown(options: list[str], description: str):
    """A Dropdown wide enough for its longest option and its description."""
    import ipywidgets as w

    width = max(len(option) for option in options)
    return w.Dropdown(
        options=options,
        description=description,
        style={"description_width": "initial"},
        layout=w.Layout(width=f"calc({width}ch + {len(description)}ch + 4em)"),
    )


def describe(transform: Transform) -> str:
    """What a transform does, with its settings: a partial's function and keywords
    ("jpeg(quality=50)"); otherwise the function's name."""
    if isinstance(transform, partial):
        settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in transform.keywords.items())  # fmt: skip
        return f"{describe(transform.func)}({settings})"
    return getattr(transform, "__name__", type(transform).__name__)


def default_attacks(steps: int = 20) -> dict[str, Callable[[float], Attack]]:
    """FGSM and L-inf PGD (alpha = 2.5 eps / steps), each built for a given eps."""
    return {
        "FGSM": lambda eps: partial(attacks.fgsm, eps=eps),
        f"PGD-{steps}": lambda eps: partial(
            attacks.pgd, eps=eps, alpha=2.5 * eps / steps, steps=steps
        ),
    }


def straight_through(transform: Transform) -> Transform:
    """t(x) on the forward pass, the identity on the backward pass (BPDA).

    x + (t(x) - x).detach() has the value t(x) and the gradient of x.

    Reference:
        Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
        Security", ICML 2018. https://arxiv.org/abs/1802.00420
    """
    return lambda x: x + (transform(x) - x).detach()


def defense_explorer(
    model: Model,
    x: Tensor,
    y: Tensor,
    classes: Sequence[str],
    transforms: dict[str, Callable[[float], Transform]],
    *,
    eps: float = 0.3,
    steps: int = 20,
    adaptive_model_fn: Callable[[Model, Transform], Model] | None = None,
    live: bool | None = None,
) -> Explorer:
    """Pick an input transform and its strength; compare a naive and an adaptive attack.

    The defended model is h(t(x)). The naive attack is PGD crafted on the undefended
    h; the adaptive one is PGD on h(t(x)) with t's gradient taken as the identity
    (BPDA, `straight_through`). The figure shows t(x), t(x_naive) and t(x_adaptive)
    for the chosen image with the defended model's predictions, its class
    probabilities for the three, and the defended accuracy over all of x.

    Args:
        model: The undefended classifier, in eval mode.
        x: Images (N, C, H, W) in [0, 1]; keep N small (each new transform or
            strength runs the adaptive attack on all of x).
        y: Labels (N,).
        classes: Class names, indexed by label.
        transforms: Name -> (strength in [0, 1] -> transform Tensor -> Tensor).
        eps: L-inf budget of both attacks.
        steps: PGD iterations (alpha = 2.5 eps / steps).
        adaptive_model_fn: (model, t) -> the model the adaptive attack
            differentiates; default x -> model(straight_through(t)(x)).
        live: As in `attack_explorer`.

    Returns:
        An Explorer with controls "index", "transform" and "strength".
    """
    import ipywidgets as w

    if not transforms:
        raise ValueError("transforms must name at least one transform, got {}")
    pgd = partial(attacks.pgd, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    x_naive = pgd(model, x, y)  # crafted once: it never sees the defense
    bpda = adaptive_model_fn or (lambda m, t: lambda v: m(straight_through(t)(v)))
    adaptive = {}  # (transform, strength) -> x_adaptive: a new image is no new attack

    def render(index: int, transform: str, strength: float) -> Figure:
        t = transforms[transform](strength)
        if (transform, strength) not in adaptive:
            adaptive[transform, strength] = pgd(bpda(model, t), x, y)
        inputs = {
            "clean": x,
            "naive": x_naive,
            "adaptive (BPDA)": adaptive[transform, strength],
        }
        with torch.no_grad():
            seen = {name: t(v) for name, v in inputs.items()}
            probs = {name: torch.softmax(model(v), 1) for name, v in seen.items()}
        meaning.value = f"strength {strength:.2f}: {describe(t)}"
        return _defense_figure(
            seen, probs, y, index, classes, f"{transform}, {describe(t)}"
        )

    meaning = w.Label()  # what the strength means for this transform, in its units
    controls = {
        "index": w.IntSlider(value=0, min=0, max=len(x) - 1, description="image"),
        "transform": dropdown(list(transforms), "transform"),
        "strength": w.FloatSlider(
            value=0.5, min=0.0, max=1.0, step=0.05, description="strength",
            continuous_update=False,
        ),
    }  # fmt: skip
    return Explorer(controls, render, live=live, notes=[meaning])


def _defense_figure(
    seen: dict[str, Tensor],
    probs: dict[str, Tensor],
    y: Tensor,
    index: int,
    classes: Sequence[str],
    title: str,
) -> Figure:
    """Transformed images of one example, its class probabilities, accuracies."""
    fig = plotting.new_figure((8, 2.4))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
    for ax, (name, v) in zip(axes, seen.items()):
        pred = probs[name][index].argmax().item()
        ax.imshow(
            v[index].detach().cpu().permute(1, 2, 0).squeeze(-1).numpy(),
            cmap="gray",
            vmin=0,
            vmax=1,
        )
        ax.set_title(f"{name}: {classes[pred]}", fontsize=8)
        ax.axis("off")
    ax = axes[3]
    width = 0.8 / len(probs)
    for j, (name, p) in enumerate(probs.items()):
        ticks = [k + (j - 1) * width for k in range(p.shape[1])]
        ax.bar(ticks, p[index].tolist(), width=width, label=name)
    ax.set_xticks(range(len(classes)), classes, fontsize=7)
    ax.set_ylim(0, 1)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    accuracy = {
        name: (p.argmax(1).cpu() == y.cpu()).float().mean().item()
        for name, p in probs.items()
    }
    fig.suptitle(
        f"defended by {title}; accuracy over {len(y)} images: "
        + ", ".join(f"{name} {a:.2f}" for name, a in accuracy.items()),
        fontsize=8,
    )
    fig.tight_layout()
    return fig


class TrainingMonitor:
    """A `training.fit` callback redrawing loss and accuracy curves after each epoch.

    Attributes:
        rows: The history rows received so far.
    """

    def __init__(self, *, title: str = "", live: bool | None = None) -> None:
        self.rows: list[dict] = []
        self.title, self._live, self._handle = title, live, None

    def __call__(self, row: dict) -> None:
        self.rows.append(dict(row))
        live = has_frontend() if self._live is None else self._live
        if not live:
            return  # papermill, scripts: the progress bar says enough
        from IPython.display import DisplayHandle

        if self._handle is None:
            self._handle = DisplayHandle()
            self._handle.display(self.figure())
        else:
            self._handle.update(self.figure())

    def figure(self) -> Figure:
        """Loss (left) and every measured accuracy (right) per epoch so far."""
        fig = plotting.new_figure((8, 3))
        ax_loss, ax_acc = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in self.rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in self.rows], "o-")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
        for key in (
            "train_accuracy",
            "test_accuracy",
            "test_robust_accuracy",
            "val_robust_accuracy",
        ):
            values = [r.get(key) for r in self.rows]
            if any(v is not None for v in values):
                label = key.removesuffix("_accuracy").replace("_", " ")
                ax_acc.plot(epochs, values, "o-", label=label)
        ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
        if ax_acc.lines:
            ax_acc.legend(fontsize=8)
        if self.title:
            fig.suptitle(f"{self.title}: epoch {len(self.rows)}", fontsize=9)
        fig.tight_layout()
        return fig


def training_monitor(title: str = "", *, live: bool | None = None) -> TrainingMonitor:
    """A callback for `training.fit(..., callback=monitor)` that plots as it trains.

    In a live frontend the curves of loss, training, test and robust accuracy are
    redrawn in place after every epoch; elsewhere (papermill, scripts) it draws
    nothing, and `monitor.figure()` gives the final curves on demand.

    Args:
        title: Which run the curves show (e.g. "FGSM-RS, eps 0.3"), above them.
        live: Redraw (True) or stay silent (False); None asks `has_frontend()`.

    Returns:
        The callback; its `.rows` keep the history received so far.
    """
    return TrainingMonitor(title=title, live=live)
