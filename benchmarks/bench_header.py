"""Header bytes of the committed LeNet files at format 1.0 and rewritten at 2.0.

Each ``benchmarks/results/reproduce-*.wcz`` (written at format 1.0: JSON header) is read and
its records and metadata written again by the current writer (format 2.0: compact header,
docs/format.md); the sections are the same bytes, so only the header changes. The decoded
tensors are checked to be identical. The baseline, measured in the same run, is the 1.0 file
itself; the 2.0 header is also compared with the 1.0 JSON compressed by plain DEFLATE (no
preset dictionary, offsets kept), to show what the packing and the dictionary add.

Writes ``benchmarks/results/header.json`` and ``header.md``::

    python benchmarks/bench_header.py
"""

from __future__ import annotations

import zlib

import numpy as np
from _common import RESULTS, machine, machine_line, write_results

from weightcodec import container

FILES = ("lenet300-deep", "lenet300-weightless", "lenet5-deep", "lenet5-weightless")


def measure(name: str) -> dict:
    old = container.read(RESULTS / f"reproduce-{name}.wcz")
    data = container.to_bytes(old.records, old.metadata)
    new = container.from_bytes(data)
    old_arrays, new_arrays = old.arrays(), new.arrays()
    if not all(np.array_equal(old_arrays[k], new_arrays[k]) for k in old_arrays):
        raise AssertionError(f"{name}: the rewritten file decodes differently")
    json_header = (RESULTS / f"reproduce-{name}.wcz").read_bytes()[container.PREAMBLE.size : old.header_bytes]
    return {
        "tensors": len(old.records),
        "file_bytes_1_0": old.file_bytes,
        "header_bytes_1_0": old.header_bytes,
        "file_bytes_2_0": new.file_bytes,
        "header_bytes_2_0": new.header_bytes,
        "header_bytes_1_0_json_deflated": container.PREAMBLE.size + len(zlib.compress(json_header, 9)) - 6,
        "header_share_1_0_percent": 100 * old.header_bytes / old.file_bytes,
        "header_share_2_0_percent": 100 * new.header_bytes / new.file_bytes,
        "file_ratio_1_0_over_2_0": old.file_bytes / new.file_bytes,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Header bytes: format 1.0 (JSON) and 2.0 (compact)",
        "",
        "Written by `benchmarks/bench_header.py`. " + machine_line(report["machine"]),
        "",
        "The committed LeNet files (format 1.0) rewritten by the current writer (format 2.0) with the same "
        "records; they decode to identical tensors. Header bytes include the 20-byte preamble. "
        "\"1.0 JSON, DEFLATE\" is the 1.0 header compressed by plain DEFLATE, for comparison. "
        "Target: at most 300 header bytes for LeNet-5.",
        "",
        "| file | tensors | header 1.0 | header 2.0 | 1.0 JSON, DEFLATE | header share 1.0 → 2.0 | file 1.0 → 2.0 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["files"].items():
        lines.append(
            f"| {name} | {r['tensors']} | {r['header_bytes_1_0']:,} | {r['header_bytes_2_0']:,} | "
            f"{r['header_bytes_1_0_json_deflated']:,} | {r['header_share_1_0_percent']:.1f} % → "
            f"{r['header_share_2_0_percent']:.1f} % | {r['file_bytes_1_0']:,} → {r['file_bytes_2_0']:,} "
            f"({r['file_ratio_1_0_over_2_0']:.3f}x smaller) |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    report = {"machine": machine(), "files": {name: measure(name) for name in FILES}}
    write_results("header", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
