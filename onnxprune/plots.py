"""Figures for people: the sensitivity study of a sweep (k or epsilon) as in the OCNNA
paper's Figure 3.

matplotlib is optional (the ``plot`` extra); it is imported only when a figure is drawn,
with the Agg backend so it works without a display.
"""

from __future__ import annotations

import io

from .errors import ParameterError

ACCURACY_STYLES = {
    "after": ("tab:blue", "o"),
    "finetuned": ("tab:green", "s"),
    "int8": ("tab:purple", "D"),
}
ACCURACY_LABELS = {
    "after": "after pruning (no retraining)",
    "finetuned": "after pruning + fine-tune",
    "int8": "after pruning, INT8",
}


def require_matplotlib() -> None:
    """Fail early, with the install hint, when the plot extra is missing."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ParameterError(
            "plots need matplotlib: pip install 'onnxprune[plot]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def sensitivity_png(report: dict) -> bytes:
    """Quality (left axis) and remaining-parameter ratio (right axis) against k or epsilon.

    ``report`` is a sweep report (see onnxprune.sweep): its ``rows`` carry the parameter
    value, ``rpr`` and the metric after pruning (and after fine-tune / INT8 when made);
    ``x_scale: log`` spreads epsilons spanning decades (symlog when 0 is among them).
    """
    plt = _pyplot()
    parameter, rows, original = report["parameter"], report["rows"], report["original"]
    metric = report.get("metric")
    xs = [row[parameter] for row in rows]
    fig, left = plt.subplots(figsize=(8, 5.4), dpi=120)
    right = left.twinx()
    try:
        if metric is not None:
            scale = 100.0 if metric == "accuracy" else 1.0
            for stage, (color, marker) in ACCURACY_STYLES.items():
                points = [
                    (x, row[f"{metric}_{stage}"] * scale)
                    for x, row in zip(xs, rows)
                    if row.get(f"{metric}_{stage}") is not None
                ]
                if points:
                    px, py = zip(*points)
                    left.plot(px, py, marker=marker, color=color, label=ACCURACY_LABELS[stage])
            base = original.get(metric)
            if base is not None:
                value = f"{100 * base:.2f}%" if metric == "accuracy" else f"{base:.4g}"
                left.axhline(
                    base * scale,
                    color="0.35",
                    linestyle="--",
                    linewidth=1,
                    label=f"original model ({value})",
                )
            if metric == "accuracy":
                left.set_ylim(0, 105)
                left.set_ylabel("test accuracy (%)")
            else:  # from 0, so that tiny changes do not look like large ones
                highest = max((v for line in left.get_lines() for v in line.get_ydata()), default=0)
                left.set_ylim(0, 1.12 * highest or 1.0)
                left.set_ylabel("test MSE")
        right.plot(
            xs,
            [100 * row["rpr"] for row in rows],
            marker="^",
            linestyle=":",
            color="tab:red",
            label="remaining parameters (RPR)",
        )
        for x, row in zip(xs, rows):
            right.annotate(
                f"{100 * row['rpr']:.1f}%",
                (x, 100 * row["rpr"]),
                textcoords="offset points",
                xytext=(0, 9),
                ha="center",
                fontsize=8,
                color="tab:red",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )
        right.set_ylim(0, 105)
        right.set_ylabel("remaining parameters (% of the original)", color="tab:red")
        right.tick_params(axis="y", colors="tab:red")
        left.set_xlabel(report.get("parameter_label", parameter))
        if report.get("x_scale") == "log":
            _log_x(left, xs)
        left.set_xticks(xs, [f"{x:g}" for x in xs])
        left.grid(True, alpha=0.3)
        left.set_title(report.get("title", "sensitivity"))
        handles = [h for axis in (left, right) for h in axis.get_legend_handles_labels()[0]]
        labels = [lab for axis in (left, right) for lab in axis.get_legend_handles_labels()[1]]
        rows_needed = -(-len(labels) // 2)  # below the axes, where no curve can hide it
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.045 * rows_needed + 0.02, 1, 1))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _log_x(axis, xs: list[float]) -> None:
    """A log x-axis; symlog (linear up to the smallest positive value) when 0 is a value."""
    positive = [x for x in xs if x > 0]
    top = max(positive, default=1.0) * 1.5
    if len(positive) == len(xs):
        axis.set_xscale("log")
        axis.set_xlim(min(positive) / 1.5, top)
    else:
        linthresh = min(positive, default=1.0)
        axis.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
        axis.set_xlim(-0.2 * linthresh, top)
    axis.minorticks_off()  # the values themselves are the ticks
