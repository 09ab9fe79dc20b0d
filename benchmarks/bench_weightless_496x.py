"""What the paper's 496x on LeNet-300-100's largest layer costs in our pipeline.

496x leaves fc1 (300x784 float32, 940,800 B) about 1.9 kB. A filter spends ~t bits per stored
weight, so that is ~15,000 bits: t = 7-8 at 99.2 % sparsity (1,882 non-zeros), where each zero
reads as a false positive with probability K / 2^t. This runs the Weightless pipeline of
``weightcodec reproduce lenet300 --method weightless`` with fc1 pruned to 99.2 % and K = 4, the
ribbon stored, and writes, per t of the sweep, bytes, largest-layer ratio, false positives and
the test error after retraining the later layers (results/weightless-496x.{json,md}).

Run: ``python benchmarks/bench_weightless_496x.py`` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import _common

from weightcodec.pipelines import weightless
from weightcodec.pipelines.data import load_mnist
from weightcodec.pipelines.settings import WEIGHTLESS, LayerPlan
from weightcodec.pipelines.steps import FLOAT32_BYTES

SPARSITY = 0.992
BITS = 2  # K = 4
T_VALUES = tuple(range(4, 13))
PAPER_RATIO = 496


def main() -> None:
    settings = replace(
        WEIGHTLESS["lenet300"],
        layers={"fc1.weight": LayerPlan(sparsity=SPARSITY, bits=BITS)},
        filters=("ribbon",),
        t_values=T_VALUES,
    )
    with tempfile.TemporaryDirectory() as folder:
        result = weightless.run("lenet300", load_mnist(), settings, Path(folder) / "m.wcz", progress=True)
    [stage] = [s for s in result["stages"] if s["method"] == "weightless"]
    [layer] = result["encoded_layers"]
    float_bytes = FLOAT32_BYTES * layer["elements"]
    points = [{**p, "largest_layer_ratio": float_bytes / p["bytes"]} for p in stage["sweep"]]
    report = {
        "machine": _common.machine(),
        "sparsity": SPARSITY,
        "K": 2**BITS,
        "n": layer["n"],
        "pruned_test_error": result["pruned_test_error"],
        "clustered_test_error": stage["clustered"]["test_error"],
        "deep_codec_bytes_same_weights": layer["deep_codec_bytes"],
        "chosen_t": stage["chosen_t"],
        "test_error": result["test_error"],
        "file_bytes": result["file_bytes"],
        "sweep": points,
    }
    _common.write_results("weightless-496x", report, markdown(report))


def markdown(report: dict) -> str:
    """The sweep as a table, with the t whose ratio first reaches the paper's."""
    reached = [p for p in report["sweep"] if p["largest_layer_ratio"] >= PAPER_RATIO]
    lines = [
        "# LeNet-300-100 fc1 at the paper's 496x",
        "",
        "Written by `benchmarks/bench_weightless_496x.py`: the Weightless pipeline of `reproduce lenet300 --method "
        f"weightless` with fc1 pruned to {100 * report['sparsity']:.1f} % ({report['n']} non-zeros, K = {report['K']}) "
        "and stored in a ribbon filter; each t retrained as in the sweep of the main run (the later layers, 2 epochs). "
        f"Test error after pruning {report['pruned_test_error']:.2f} %, after clustering "
        f"{report['clustered_test_error']:.2f} %; the deep codec stores the same weights in "
        f"{report['deep_codec_bytes_same_weights']} B.",
        "",
        "| t | fc1 bytes | vs float32 | false positives | test error % |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['t']} | {p['bytes']} | {p['largest_layer_ratio']:.0f}x | {p['false_positives']} | {p['test_error']:.2f} |"
        for p in report["sweep"]
    ]
    lines += [""]
    if reached:
        best = reached[-1]
        lines.append(
            f"The largest t that reaches {PAPER_RATIO}x is t = {best['t']} ({best['largest_layer_ratio']:.0f}x), where "
            f"{best['false_positives']} zeros read back as weights ({best['false_positives'] / report['n']:.1f} per "
            f"stored one) and the test error is {best['test_error']:.2f} %."
        )
    else:
        lines.append(f"No t of the sweep reaches {PAPER_RATIO}x.")
    lines.append(
        f"The full pipeline then kept t = {report['chosen_t']} (validation), for a whole-model file of "
        f"{report['file_bytes']} B at {report['test_error']:.2f} % test error."
    )
    lines += ["", _common.machine_line(report["machine"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
