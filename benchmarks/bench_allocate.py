"""encode_to_size on a real state_dict: bytes, weight error, encode time, and what the level coder's contexts buy.

For each ratio, ``weightcodec.encode_to_size`` writes a file (data-free); the benchmark records
its bytes against the budget, the relative weight error ``sqrt(sum (w - q)^2 / sum w^2)``, wall
and CPU seconds with the load average (the machine is shared: wall time is an upper bound), and
the choices. For the uniform tensors of each file it also codes the same levels with an order-0
coder (rANS with a stored count model, ``ans.py``, levels zigzagged) and computes their order-0
entropy: the gain of the context-adaptive coder against both. Fidelity on sentence embeddings is
``bench_real_model.py``'s job.

    python benchmarks/bench_allocate.py MODEL.safetensors [--name minilm] [--ratios 4 6 8 10 12]

Writes ``benchmarks/results/allocate-<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _common import RESULTS, machine, machine_line

import weightcodec
from weightcodec import container, state_files
from weightcodec.codecs import cabac, uniform
from weightcodec.codecs.ans import ans_encode


def context_gain(path: Path) -> dict:
    """Bytes of the uniform tensors' level streams: context coder, order-0 rANS, order-0 entropy."""
    totals = {"cabac_bytes": 0, "ans_order0_bytes": 0, "order0_entropy_bytes": 0.0, "levels": 0}
    for record in container.read(path).records:
        if record.encoded.codec != uniform.NAME:
            continue
        levels = cabac.cabac_decode(bytes(record.encoded.sections["levels"]), *uniform.matrix_shape(record.shape))
        zigzag = np.where(levels >= 0, 2 * levels, -2 * levels - 1).reshape(-1)
        _, counts = np.unique(levels, return_counts=True)
        totals["cabac_bytes"] += len(record.encoded.sections["levels"])
        totals["ans_order0_bytes"] += len(ans_encode(zigzag))
        totals["order0_entropy_bytes"] += float(-(counts * np.log2(counts / levels.size)).sum()) / 8
        totals["levels"] += levels.size
    totals["gain_vs_ans_percent"] = 100 * (1 - totals["cabac_bytes"] / totals["ans_order0_bytes"])
    totals["gain_vs_entropy_percent"] = 100 * (1 - totals["cabac_bytes"] / totals["order0_entropy_bytes"])
    return totals


def run(model: Path, ratios: list[float]) -> list[dict]:
    state = state_files.load_state_dict(model)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for ratio in ratios:
            path = Path(scratch) / f"r{ratio}.wcz"
            load = os.getloadavg()
            cpu = time.process_time()
            report = weightcodec.encode_to_size(state, path, ratio=ratio)
            cpu = time.process_time() - cpu
            again = Path(scratch) / "again.wcz"
            weightcodec.encode_to_size(state, again, ratio=ratio)
            rows.append({
                "ratio": ratio,
                "budget": report["budget"],
                "file_bytes": report["file_bytes"],
                "relative_error": report["relative_error"],
                "wall_seconds": report["seconds"],
                "cpu_seconds": cpu,
                "load_average_before": load,
                "rounds": report["rounds"],
                "deterministic": path.read_bytes() == again.read_bytes(),
                "codecs": dict(Counter(t["codec"] for t in report["tensors"].values())),
                "context_gain": context_gain(path),
            })
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "context_gain"}), flush=True)
    return rows


def markdown(name: str, rows: list[dict], info: dict) -> str:
    lines = [
        f"# encode_to_size on {name}",
        "",
        "Data-free rate allocation (`weightcodec.encode_to_size`); `benchmarks/bench_allocate.py`.",
        "",
        "| ratio | budget | file bytes | rel. weight error | wall s | CPU s | load (1 min) | level bytes: cabac vs order-0 rANS | vs order-0 entropy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["context_gain"]
        lines.append(
            f"| {r['ratio']:g}x | {r['budget']} | {r['file_bytes']} | {r['relative_error']:.4f} | {r['wall_seconds']:.1f} "
            f"| {r['cpu_seconds']:.1f} | {r['load_average_before'][0]:.1f} | {-g['gain_vs_ans_percent']:+.2f}% "
            f"| {-g['gain_vs_entropy_percent']:+.2f}% |"
        )
    lines += ["", "Level bytes: the uniform tensors' context-coded level streams against the same levels coded "
              "by order-0 rANS with its stored model, and against their order-0 entropy (negative: cabac is smaller).",
              "", "Every file was written twice: " + ("same bytes." if all(r["deterministic"] for r in rows) else "BYTES DIFFER."),
              "", machine_line(info), ""]
    return "\n".join(lines)


def rewrite_markdown(name: str) -> None:
    """Rewrite the markdown page from the JSON results (no encoding)."""
    saved = json.loads((RESULTS / f"allocate-{name}.json").read_text())
    (RESULTS / f"allocate-{name}.md").write_text(markdown(name, saved["rows"], saved["machine"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a .safetensors or .pt state_dict")
    parser.add_argument("--name", default="minilm", help="name in the result files")
    parser.add_argument("--ratios", type=float, nargs="+", default=[4, 6, 8, 10, 12])
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.markdown_only:
        rewrite_markdown(args.name)
        return
    info = machine()
    rows = run(args.model, args.ratios)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"allocate-{args.name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    (RESULTS / f"allocate-{args.name}.md").write_text(markdown(args.name, rows, info))


if __name__ == "__main__":
    main()
