"""Figures of a Weightless run, drawn from its result dict alone (matplotlib, Agg backend, PNG).

:func:`weightless_figures` draws, from what :func:`.weightless.run` returns:

* ``<prefix>-error-vs-t.png``: validation error right after encoding (before retraining) and
  validation and test error after retraining the later layers, against ``t``, for the stored
  filter; the other filters at the chosen ``t``; the dense baseline, the reference ``t`` is held
  to and the chosen ``t`` marked;
* ``<prefix>-bytes-vs-t.png``: the encoded layer's bytes against ``t``, per filter, with the deep
  codec's bytes for the same weights as a horizontal line;
* ``<prefix>-false-positives-vs-t.png``: measured and expected (``zeros * K / 2**t``) false
  positives against ``t`` (log scale: the paper's exponential trade-off);
* ``<prefix>-<layer>-histogram.png``: per encoded layer, the histogram of its non-zero weights
  after pruning, with the fine-tuned centroids as vertical lines.

Each file is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

from ..container import atomic_write_bytes
from .report import by_filter

__all__ = ["weightless_figures", "plot_error_vs_t", "plot_bytes_vs_t", "plot_false_positives_vs_t", "plot_histogram"]

FIGSIZE = (6.4, 4.2)
DPI = 100
MARKERS = {"bloomier": "o", "ribbon": "s", "fuse": "^"}


def weightless_figures(result: dict, prefix: str | Path) -> list[Path]:
    """Draw every figure of ``result`` to ``<prefix>-*.png``; return the paths written.

    Parameters
    ----------
    result : dict
        As returned by :func:`weightcodec.pipelines.weightless.run`.
    prefix : str or pathlib.Path
        Path prefix of the files; its folder must exist.

    Returns
    -------
    list of pathlib.Path
        The three sweep figures per encoded layer (the layer name is added when there are
        several), then one histogram per encoded layer.
    """
    prefix = Path(prefix)
    encoded = [stage for stage in result["stages"] if stage["method"] == "weightless"]
    paths = []
    for stage in encoded:
        layer = stage["names"][0].removesuffix(".weight")
        stem = f"{prefix}-{layer}" if len(encoded) > 1 else str(prefix)
        paths.append(_save(plot_error_vs_t(stage, result["baseline_valid_error"]), Path(f"{stem}-error-vs-t.png")))
        paths.append(_save(plot_bytes_vs_t(stage), Path(f"{stem}-bytes-vs-t.png")))
        paths.append(_save(plot_false_positives_vs_t(stage), Path(f"{stem}-false-positives-vs-t.png")))
    for stage in encoded:
        layer = stage["names"][0].removesuffix(".weight")
        paths.append(_save(plot_histogram(stage), Path(f"{prefix}-{layer}-histogram.png")))
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _column(points: Iterable[dict], key: str) -> list:
    return [p[key] for p in points]


def plot_error_vs_t(stage: dict, baseline: float):
    """Error (percent) against ``t`` for one encoded layer's sweep; returns the matplotlib Figure.

    Lines: the stored filter's sweep; markers: the other filters, retrained at the chosen ``t``.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGSIZE)
    points = sorted(stage["sweep"], key=lambda p: p["t"])
    name = points[0]["filter"] if points else ""
    t = _column(points, "t")
    axes.plot(t, _column(points, "valid_error_encoded"), marker="o", linestyle=":", label=f"{name}: valid, before retraining")
    axes.plot(t, _column(points, "valid_error"), marker="o", label=f"{name}: valid, retrained")
    axes.plot(t, _column(points, "test_error"), marker="o", linestyle="--", label=f"{name}: test, retrained")
    for point in stage["alternatives"]:
        axes.plot([point["t"]], [point["test_error"]], marker=MARKERS.get(point["filter"], "x"), linestyle="none",
                  label=f"{point['filter']}: test, retrained at t={point['t']}")  # fmt: skip
    axes.axhline(baseline, color="black", linewidth=0.8, label="dense baseline (valid)")
    axes.axhline(stage["reference_valid_error"], color="gray", linewidth=0.8, label="reference for t (valid)")
    axes.axhline(stage["clustered"]["test_error"], color="gray", linestyle="--", linewidth=0.8, label="before encoding (test)")
    _finish_t_axes(axes, stage, ylabel="error (%)", title=f"error vs t (chosen t = {stage['chosen_t']})", log=True)
    return figure


def plot_bytes_vs_t(stage: dict):
    """Encoded bytes of the layer against ``t``, per filter, with the deep codec's bytes."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGSIZE)
    for name, points in by_filter(stage["encodings"]).items():
        axes.plot(_column(points, "t"), _column(points, "bytes"), marker=MARKERS.get(name, "x"), label=f"weightless, {name}")
    for coder, nbytes in stage["deep_codec_bytes"].items():
        axes.axhline(nbytes, linestyle="--", linewidth=0.8, color="tab:red" if coder == "huffman" else "tab:purple",
                     label=f"deep codec ({coder}), same weights")  # fmt: skip
    _finish_t_axes(axes, stage, ylabel="bytes", title="bytes vs t")
    return figure


def plot_false_positives_vs_t(stage: dict):
    """Measured and expected false positives against ``t`` (log scale)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGSIZE)
    for name, points in by_filter(stage["encodings"]).items():
        axes.plot(_column(points, "t"), [max(v, 0.5) for v in _column(points, "false_positives")],
                  marker=MARKERS.get(name, "x"), label=f"{name}: measured")  # fmt: skip
    expected = {p["t"]: p["expected_false_positives"] for p in stage["encodings"]}
    axes.plot(sorted(expected), [expected[t] for t in sorted(expected)], color="black", linestyle=":", label="zeros * K / 2^t")
    _finish_t_axes(axes, stage, ylabel="false positives (zeros decoded non-zero)", title="false positives vs t", log=True)
    return figure


def _finish_t_axes(axes, stage: dict, *, ylabel: str, title: str, log: bool = False) -> None:
    """What every plot against ``t`` shares: the chosen ``t`` marked, labels, title and legend."""
    axes.axvline(stage["chosen_t"], color="gray", linestyle=":", linewidth=0.8)
    if log:
        axes.set_yscale("log")
    axes.set_xlabel("t (bits per cell)")
    axes.set_ylabel(ylabel)
    axes.set_title(f"{stage['names'][0]}: {title}", fontsize="medium")
    axes.legend(fontsize="x-small")


def plot_histogram(stage: dict):
    """Histogram of the layer's non-zero weights after pruning, with the centroids."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGSIZE)
    edges, counts = stage["histogram"]["edges"], stage["histogram"]["counts"]
    axes.stairs(counts, edges, fill=True, color="tab:blue", label="pruned weights")
    axes.vlines(stage["centroids"], 0, 1, transform=axes.get_xaxis_transform(), colors="tab:red", linewidth=1.0,
                label=f"{len(stage['centroids'])} centroids (fine-tuned)")  # fmt: skip
    axes.set_xlabel("weight")
    axes.set_ylabel("count")
    axes.set_title(
        f"{stage['names'][0]}: {100 * stage['sparsity']:.1f} % pruned, K = {2 ** stage['plan']['bits']}", fontsize="medium"
    )
    axes.legend(fontsize="x-small")
    return figure


def _save(figure, path: Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
