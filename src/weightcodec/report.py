"""Where the bytes go: a per-tensor table of a ``.wcz`` file, its JSON form, and plots.

The table follows Table 2 of Deep Compression (Han et al. 2016): for each tensor its shape,
codec, fraction of non-zeros, shared values (and the ``K`` the stored recipe asked for), bits per value and per index (deep) or cell width ``t`` and bits
per non-zero (weightless), the bytes of each section, the compression ratio against float32,
and the size against the codec's lower bound (``bound_bytes``: the entropy of the streams for
deep, ``n * t`` bits for a weightless table). Totals include the file's header. Everything is
computed from the file alone: each codec's ``describe`` reads its stored sections.

A header may claim tensors far larger than the file, so the figures that need a decode (the
deep streams' statistics, a weightless table's measured false positives) are computed only for
tensors whose decoded size fits the memory budget (``max_bytes``, by default the memory
available, as for decoding); the others are left out (None, ``-`` in the table) with a note.
The rest costs memory and time in proportion to the file.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import container
from .errors import EncodeError
from .recipe import clusters_asked

__all__ = ["FLOAT32_BYTES", "headline", "summarize", "format_table", "plot"]

FLOAT32_BYTES = 4  # the ratio is against the float32 model, as in the papers
MAX_HISTOGRAMS = 16  # histogram panels drawn by plot(); the largest encoded tensors first
HISTOGRAM_BINS = 64
# Keys of a codec's describe() that become columns; the rest stays in the JSON "codec" entry.
VALUE_BITS, INDEX_BITS = "bits_per_code", "bits_per_gap"


def headline(wcz: container.WczFile) -> str:
    """One line about a file, from its header alone (nothing is decoded).

    Examples
    --------
    >>> from weightcodec.codecs import deep
    >>> rec = container.TensorRecord("w", "float32", (64, 64), deep.encode(np.eye(64, dtype=np.float32)))
    >>> headline(container.from_bytes(container.to_bytes([rec])))
    '1 tensors, 4096 values, 100 bytes (header 82): 163.8x smaller than float32 (16384 bytes)'
    """
    elements = sum(math.prod(r.shape) for r in wcz.records)
    ratio = _ratio(FLOAT32_BYTES * elements, wcz.file_bytes)
    return (
        f"{len(wcz.records)} tensors, {elements} values, {wcz.file_bytes} bytes (header {wcz.header_bytes}): "
        f"{_fmt_ratio(ratio)} smaller than float32 ({FLOAT32_BYTES * elements} bytes)"
    )


def summarize(wcz: container.WczFile, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Per-tensor figures and totals of a parsed file, as plain JSON-able values.

    Parameters
    ----------
    wcz : weightcodec.container.WczFile
    max_bytes : int, optional
        Memory budget of one tensor's decode (default: the memory available). A tensor that
        decodes to more gets only the figures its header and sections give, and a note.

    Returns
    -------
    dict
        ``file_bytes``, ``header_bytes``, ``metadata``, ``tensors`` (one dict per tensor: ``name``,
        ``shape``, ``dtype``, ``codec``, ``elements``, ``nonzero``, ``nonzero_percent``, ``bytes``,
        ``section_bytes``, ``bound_bytes``, ``overhead_percent``, ``ratio``, ``clusters_asked`` (the
        K of the recipe stored in the metadata, or None) and ``describe``, the
        codec's own figures, e.g. ``n``, ``m``, ``t`` and the expected and measured false
        positives of a weightless table), ``totals`` and ``notes`` (the tensors left unmeasured;
        their unmeasured figures, and the totals that need them, are None).

    Raises
    ------
    FormatError, CorruptFileError
        If a tensor cannot be decoded.
    """
    budget = container.available_memory() if max_bytes is None else max_bytes
    asked = _clusters_asked(wcz)
    rows, notes = [], []
    for record in wcz.records:
        needed = container.decoded_nbytes(record)
        measure = budget is None or needed <= budget
        rows.append({**_tensor_row(wcz, record, measure), "clusters_asked": asked.get(record.name)})
        if not measure:
            notes.append(
                f"{record.name}: not decoded (needs {needed} bytes, above the budget of {budget}); "
                "figures that need a decode are left out, raise the budget with --max-memory SIZE"
            )
    return {
        "file_bytes": wcz.file_bytes,
        "header_bytes": wcz.header_bytes,
        "metadata": dict(wcz.metadata),
        "tensors": rows,
        "totals": _totals(rows, wcz),
        "notes": notes,
    }


def _tensor_row(wcz: container.WczFile, record: container.TensorRecord, measure: bool) -> dict[str, Any]:
    encoded = record.encoded
    described = wcz.describe(record.name, measure=measure)
    elements = math.prod(record.shape)
    nonzero = described.get("nonzero")
    nbytes = encoded.nbytes
    bound = described["bound_bytes"]
    return {
        "name": record.name,
        "shape": list(record.shape),
        "dtype": record.dtype,
        "codec": encoded.codec,
        "elements": elements,
        "nonzero": nonzero,
        "nonzero_percent": None if nonzero is None else _percent(nonzero, elements),
        "bytes": nbytes,
        "section_bytes": {name: len(data) for name, data in encoded.sections.items()},
        "bound_bytes": None if bound is None else float(bound),
        "overhead_percent": None if bound is None else _percent(nbytes - bound, bound),
        "ratio": _ratio(FLOAT32_BYTES * elements, nbytes),
        "describe": described,
    }


def _clusters_asked(wcz: container.WczFile) -> dict[str, int]:
    """K asked per tensor, from the recipe in the file's metadata; empty if it holds none we can read."""
    try:
        return clusters_asked(wcz.metadata["recipe"], [r.name for r in wcz.records if r.encoded.codec != "raw"])
    except (KeyError, EncodeError):
        return {}


def _totals(rows: list[dict[str, Any]], wcz: container.WczFile) -> dict[str, Any]:
    elements = sum(r["elements"] for r in rows)
    nonzero = _sum_known(r["nonzero"] for r in rows)
    payload = sum(r["bytes"] for r in rows)
    bound = _sum_known(r["bound_bytes"] for r in rows)
    return {
        "tensors": len(rows),
        "elements": elements,
        "nonzero": nonzero,
        "nonzero_percent": None if nonzero is None else _percent(nonzero, elements),
        "payload_bytes": payload,
        "header_bytes": wcz.header_bytes,
        "file_bytes": wcz.file_bytes,
        "float32_bytes": FLOAT32_BYTES * elements,
        "ratio": _ratio(FLOAT32_BYTES * elements, wcz.file_bytes),
        "bound_bytes": bound,
        "overhead_percent": None if bound is None else _percent(wcz.file_bytes - bound, bound),
    }


def _sum_known(values) -> float | None:
    """The sum, or None if any value is unknown (None)."""
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _ratio(original: float, stored: float) -> float | None:
    return original / stored if stored else None


# ----------------------------------------------------------------------------- table


def format_table(summary: dict[str, Any]) -> str:
    """The summary as aligned text: one row per tensor, a totals row, and a weightless table.

    Bit columns are per non-zero weight (per entry, fillers included, for deep's value and
    index bits, as in Han et al.'s Table 2); ``-`` marks a figure that does not apply.
    """
    header = ["name", "shape", "codec", "nz %", "K (asked)", "value b", "index b", "t", "b/nz", "bytes by section",
              "bytes", "ratio", "bound", "over %"]
    rows = [_table_row(r) for r in summary["tensors"]]
    totals = summary["totals"]
    rows.append([
        "TOTAL (file)", f"{totals['elements']} el", "", _fmt(totals["nonzero_percent"], ".1f"), "", "", "", "", "",
        f"header {totals['header_bytes']} + payload {totals['payload_bytes']}", str(totals["file_bytes"]),
        _fmt_ratio(totals["ratio"]), _fmt(totals["bound_bytes"], ".0f"), _fmt(totals["overhead_percent"], ".1f"),
    ])
    text = _align([header, *rows])
    weightless = [r for r in summary["tensors"] if "measured_false_positives" in r["describe"]]
    if weightless:
        text += "\n\n" + _align([
            ["weightless", "n", "m", "t", "expected FP", "measured FP"],
            *[_weightless_row(r) for r in weightless],
        ])
    notes = summary.get("notes", [])
    if notes:
        text += "\n\n" + "\n".join(f"note: {note}" for note in notes)
    return text


def _table_row(row: dict[str, Any]) -> list[str]:
    described = row["describe"]
    return [
        row["name"],
        "x".join(map(str, row["shape"])) or "scalar",
        row["codec"],
        _fmt(row["nonzero_percent"], ".1f"),
        _fmt_clusters(described.get("clusters"), row["clusters_asked"]),
        _fmt_bits(described.get(VALUE_BITS)),
        _fmt_bits(described.get(INDEX_BITS)),
        str(described.get("t", "-")),
        _fmt_bits(described.get("bits_per_nonzero")),
        " + ".join(f"{name} {n}" for name, n in row["section_bytes"].items()),
        str(row["bytes"]),
        _fmt_ratio(row["ratio"]),
        _fmt(row["bound_bytes"], ".0f"),
        _fmt(row["overhead_percent"], ".1f"),
    ]


def _weightless_row(row: dict[str, Any]) -> list[str]:
    described = row["describe"]
    return [
        row["name"],
        str(described["n"]),
        str(described["m"]),
        str(described["t"]),
        f"{described['expected_false_positives']:.1f}",
        _fmt(described["measured_false_positives"], "d"),
    ]


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` when it is unknown."""
    return "-" if value is None else format(value, spec)


def _fmt_clusters(used: int | None, asked: int | None) -> str:
    """Shared values the tensor holds, then the K its recipe asked for (fewer: it had fewer distinct values)."""
    if used is None:
        return "-"
    return f"{used} ({asked})" if asked is not None else str(used)


def _fmt_bits(value: float | None) -> str:
    return _fmt(value, ".2f")


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _align(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------- plots


def plot(wcz: container.WczFile, summary: dict[str, Any], path: str | os.PathLike, *, max_bytes: int | None = None) -> None:
    """Draw bytes per tensor (stacked by section) and weight histograms with centroids to a PNG.

    The histograms show the decoded non-zero weights of the encoded (non-raw) tensors, at most
    :data:`MAX_HISTOGRAMS` of them, largest first; the centroids (the distinct decoded values)
    are marked with vertical lines; tensors left unmeasured by :func:`summarize` are not drawn,
    and each one drawn is decoded within ``max_bytes`` (as :func:`summarize`). The file is
    written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    encoded = sorted((r for r in summary["tensors"] if r["codec"] != "raw" and r["nonzero"]),
                     key=lambda r: -r["elements"])[:MAX_HISTOGRAMS]
    columns = min(4, max(1, len(encoded)))
    hist_rows = math.ceil(len(encoded) / columns)
    figure = plt.figure(figsize=(4 * columns + 2, 0.3 * len(summary["tensors"]) + 2 + 3 * hist_rows))
    grid = figure.add_gridspec(1 + hist_rows, columns, height_ratios=[max(2, 0.3 * len(summary["tensors"]))] + [3] * hist_rows)
    _plot_bytes(figure.add_subplot(grid[0, :]), summary)
    for index, row in enumerate(encoded):
        _plot_histogram(figure.add_subplot(grid[1 + index // columns, index % columns]), row, wcz.decode(row["name"], max_bytes=max_bytes))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    container.atomic_write_bytes(Path(path), buffer.getvalue())


def _plot_bytes(axes, summary: dict[str, Any]) -> None:
    rows = summary["tensors"]
    names = [r["name"] for r in rows]
    left = np.zeros(len(rows))
    sections = sorted({s for r in rows for s in r["section_bytes"]})
    for section in sections:
        widths = np.array([r["section_bytes"].get(section, 0) for r in rows], dtype=float)
        axes.barh(names, widths, left=left, label=section)
        left += widths
    axes.invert_yaxis()
    axes.set_xlabel("bytes")
    totals = summary["totals"]
    axes.set_title(f"bytes per tensor: {totals['file_bytes']} B file, {_fmt_ratio(totals['ratio'])} vs float32")
    axes.legend(loc="lower right", fontsize="small")


def _plot_histogram(axes, row: dict[str, Any], array: np.ndarray) -> None:
    values = array[array != 0].astype(np.float64)
    centroids = np.unique(values)
    axes.hist(values, bins=HISTOGRAM_BINS, color="tab:blue")
    axes.vlines(centroids, 0, 1, transform=axes.get_xaxis_transform(), colors="tab:red", linewidth=0.6)
    axes.set_title(f"{row['name']} ({row['codec']}, {centroids.size} values)", fontsize="small")
    axes.tick_params(labelsize="x-small")
