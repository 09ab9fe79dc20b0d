"""Huffman vs rANS vs the empirical entropy on the deep codec's streams of the real LeNet layers.

The layers are those of the committed Deep Compression results,
``benchmarks/results/reproduce-lenet300-deep.wcz`` and ``reproduce-lenet5-deep.wcz``: the pruned,
clustered (and retrained) LeNet-300-100 and LeNet-5 weights our deep pipeline wrote, decoded with
the package's own reader. For every layer the deep codec's two streams (relative gaps with
fillers, and cluster codes with the filler code ``K``) are rebuilt exactly as
:func:`weightcodec.codecs.deep.encode` builds them, at the index width the deep codec picks when it
codes them with ANS (re-encoding with Huffman reproduces the committed file's sections byte for
byte, which the script checks). Each stream is then coded by

* Huffman (code table included),
* ANS as it is now (``ans_encode``: the count model or the binned model, whichever is shorter),
* ANS with the count model only (``model="counts"``: the stream ``ans_encode`` wrote before the
  binned model existed, byte for byte),

and reported against its order-0 empirical entropy: symbols, distinct symbols, entropy, bytes,
model-header bytes, overhead with and without the header, and the NML regret (the least
overhead any order-0 code can guarantee for that many symbols over that many distinct values,
:func:`log2_nml_regret`). Per layer: the whole deep tensor
(codebook included) with each coder at the index width that suits it. For the two largest
layers, the same figures at every index width from 6 to 12, to show what the width does to the
gap stream's alphabet.

Writes ``benchmarks/results/entropy.json`` and ``entropy.md``::

    nice -n 10 python benchmarks/bench_entropy.py
"""

from __future__ import annotations

import math
from importlib.metadata import version

import numpy as np
from _common import RESULTS, machine, machine_line, timed, write_results

from weightcodec import container
from weightcodec.codecs import deep
from weightcodec.codecs.ans import ans_decode, ans_encode, ans_header_bytes
from weightcodec.codecs.huffman import entropy_bits, huffman_encode
from weightcodec.codecs.sparse_index import gaps_with_fillers

RESULT_FILES = {
    "LeNet-300-100": RESULTS / "reproduce-lenet300-deep.wcz",
    "LeNet-5": RESULTS / "reproduce-lenet5-deep.wcz",
}
WIDTH_LAYERS = ("LeNet-300-100 fc1", "LeNet-5 fc1")  # the per-width table
WIDTHS = range(6, 13)
TARGET_PERCENT = 1.0
MODEL_NAMES = {0: "counts", 1: "counts", 2: "bins"}  # low two bits of an ANS stream's first byte


def real_layers() -> list[tuple[str, np.ndarray, container.TensorRecord]]:
    """``(name, layer, record)`` of every deep-coded tensor in the committed results files."""
    layers = []
    for model, path in RESULT_FILES.items():
        wcz = container.read(path)
        for record in wcz.records:
            if record.encoded.codec == deep.NAME:
                layers.append((f"{model} {record.name.removesuffix('.weight')}", wcz.decode(record.name), record))
    return layers


def streams(layer: np.ndarray, index_bits: int) -> dict[str, np.ndarray]:
    """The deep codec's gap and code streams at ``index_bits`` (codes: ``K`` marks a filler)."""
    codebook, codes, positions = deep.build_codebook(layer.reshape(-1))
    gap_symbols, is_filler = gaps_with_fillers(positions, index_bits)
    entry_codes = np.full(gap_symbols.size, codebook.size, dtype=np.int64)
    entry_codes[~is_filler] = codes
    return {"gaps": gap_symbols, "codes": entry_codes}


def percent(value: float, bound: float) -> float | None:
    return 100 * (value - bound) / bound if bound else None


def bench_stream(symbols: np.ndarray) -> dict:
    bound = entropy_bits(symbols) / 8
    huff, huff_s = timed(lambda: huffman_encode(symbols))
    ans, ans_s = timed(lambda: ans_encode(symbols))
    counts = ans_encode(symbols, model="counts")
    assert np.array_equal(ans_decode(ans, symbols.size), symbols)
    assert np.array_equal(ans_decode(counts, symbols.size), symbols)
    header = ans_header_bytes(ans, symbols.size)
    counts_header = ans_header_bytes(counts, symbols.size)
    distinct = int(np.unique(symbols).size)
    regret = log2_nml_regret(distinct, symbols.size) / 8
    return {
        "symbols": int(symbols.size),
        "distinct": distinct,
        "singletons": int(np.count_nonzero(np.unique(symbols, return_counts=True)[1] == 1)),
        "entropy_bytes": bound,
        "huffman_bytes": len(huff),
        "huffman_overhead_percent": percent(len(huff), bound),
        "ans_model": MODEL_NAMES[ans[0] & 3] if len(ans) > 2 else "single symbol",
        "ans_bytes": len(ans),
        "ans_header_bytes": header,
        "ans_overhead_percent": percent(len(ans), bound),
        "ans_payload_overhead_percent": percent(len(ans) - header, bound),
        "ans_counts_bytes": len(counts),
        "ans_counts_header_bytes": counts_header,
        "ans_counts_overhead_percent": percent(len(counts), bound),
        "ans_counts_payload_overhead_percent": percent(len(counts) - counts_header, bound),
        "nml_regret_bytes": regret,
        "nml_regret_percent": percent(bound + regret, bound),
        "huffman_encode_s": huff_s,
        "ans_encode_s": ans_s,
    }


def tensor_bytes(layer: np.ndarray, encode_stream) -> tuple[int, int]:
    """``(bytes, index_bits)`` of the deep tensor with streams coded by ``encode_stream``, at the
    width from :data:`deep.AUTO_INDEX_BITS` with the fewest bytes (the narrowest on a tie), as
    :func:`deep.encode` chooses it."""
    clusters = np.unique(layer[layer != 0]).size
    sizes = [(sum(len(encode_stream(s)) for s in streams(layer, b).values()), b) for b in deep.AUTO_INDEX_BITS]
    size, index_bits = min(sizes)
    return size + 4 * clusters, index_bits


def bench_layer(name: str, layer: np.ndarray, record: container.TensorRecord) -> dict:
    committed = record.encoded
    again = deep.encode(layer, index_bits=committed.meta["index_bits"], entropy="huffman")
    assert again.sections == dict(committed.sections), f"{name}: streams differ from the committed file's"
    ans_tensor = deep.encode(layer, entropy="ans")
    assert np.array_equal(deep.decode(ans_tensor.meta, ans_tensor.sections, layer.shape), layer)
    huffman_tensor = deep.encode(layer, entropy="huffman")
    assert huffman_tensor.nbytes == committed.nbytes, f"{name}: Huffman no longer picks the committed width"
    counts_bytes, counts_bits = tensor_bytes(layer, lambda s: ans_encode(s, model="counts"))
    assert tensor_bytes(layer, ans_encode) == (ans_tensor.nbytes, ans_tensor.meta["index_bits"])
    index_bits = ans_tensor.meta["index_bits"]
    parts = streams(layer, index_bits)
    result = {
        "layer": name,
        "shape": list(layer.shape),
        "nonzero": int(np.count_nonzero(layer)),
        "clusters": int(np.unique(layer[layer != 0]).size),
        "index_bits": index_bits,
        "streams": {k: bench_stream(v) for k, v in parts.items()},
        "committed_file_bytes": committed.nbytes,
        "committed_index_bits": committed.meta["index_bits"],
        "huffman_tensor_bytes": huffman_tensor.nbytes,
        "huffman_index_bits": huffman_tensor.meta["index_bits"],
        "ans_counts_tensor_bytes": counts_bytes,
        "ans_counts_index_bits": counts_bits,
        "ans_tensor_bytes": ans_tensor.nbytes,
        "ans_index_bits": index_bits,
    }
    result["entropy_tensor_bytes"] = 4 * result["clusters"] + sum(s["entropy_bytes"] for s in result["streams"].values())
    if name in WIDTH_LAYERS:
        result["by_width"] = [by_width(layer, b) for b in WIDTHS]
    return result


def by_width(layer: np.ndarray, index_bits: int) -> dict:
    row = {"index_bits": index_bits, "tensor_bytes": 4 * np.unique(layer[layer != 0]).size}
    for sname, symbols in streams(layer, index_bits).items():
        data = ans_encode(symbols)
        bound = entropy_bits(symbols) / 8
        row[sname] = {
            "symbols": int(symbols.size),
            "distinct": int(np.unique(symbols).size),
            "entropy_bytes": bound,
            "ans_bytes": len(data),
            "ans_overhead_percent": percent(len(data), bound),
        }
        row["tensor_bytes"] += len(data)
    return row


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} %"


def markdown(report: dict) -> str:
    m = report["machine"]
    layers = report["layers"]
    lines = [
        "# Entropy coding of the deep codec's streams: Huffman vs ANS vs the empirical entropy",
        "",
        f"Written by `benchmarks/bench_entropy.py`. {machine_line(m)} constriction {m['constriction']}.",
        "",
        "The layers are the real LeNet-300-100 and LeNet-5 weights of the committed Deep Compression results "
        "(`reproduce-lenet300-deep.wcz`, `reproduce-lenet5-deep.wcz`: pruned, clustered and retrained by our deep "
        "pipeline), decoded from those files. Their gap and code streams are rebuilt as the deep codec builds them "
        "(re-encoding with Huffman gives the committed sections byte for byte), at the index width the deep codec "
        "picks with ANS. Overheads are over each stream's order-0 empirical entropy; Huffman bytes include its code "
        "table, ANS bytes its model header (also shown alone) and the coder's final state.",
        "",
        "## Per stream",
        "",
        "| layer | stream | symbols | distinct | entropy B | Huffman B | Huffman over | ANS B | ANS model | "
        "ANS header B | ANS over | ANS over w/o header |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in layers:
        for sname, s in r["streams"].items():
            lines.append(
                f"| {r['layer']} (b={r['index_bits']}) | {sname} | {s['symbols']:,} | {s['distinct']} | "
                f"{s['entropy_bytes']:,.0f} | {s['huffman_bytes']:,} | {pct(s['huffman_overhead_percent'])} | "
                f"{s['ans_bytes']:,} | {s['ans_model']} | {s['ans_header_bytes']} | {pct(s['ans_overhead_percent'])} | "
                f"{pct(s['ans_payload_overhead_percent'])} |"
            )
    lines += [
        "",
        "## The ANS model header: before and after the binned model",
        "",
        "*Before*: the count model alone (every distinct symbol with its gamma-coded quantized count; what "
        "`ans_encode` wrote before the binned model was added, byte for byte). *After*: `ans_encode` now, "
        "which also builds a binned model (runs of rare symbols share one mass) and keeps the shorter stream.",
        "",
        "| layer | stream | symbols | distinct | of them once | before: B | header B | over | over w/o header | "
        "after: B | model | header B | over | over w/o header |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in layers:
        for sname, s in r["streams"].items():
            lines.append(
                f"| {r['layer']} | {sname} | {s['symbols']:,} | {s['distinct']} | {s['singletons']} | "
                f"{s['ans_counts_bytes']:,} | {s['ans_counts_header_bytes']} | {pct(s['ans_counts_overhead_percent'])} | "
                f"{pct(s['ans_counts_payload_overhead_percent'])} | {s['ans_bytes']:,} | {s['ans_model']} | "
                f"{s['ans_header_bytes']} | {pct(s['ans_overhead_percent'])} | {pct(s['ans_payload_overhead_percent'])} |"
            )
    lines += [
        "",
        "## Whole tensor (deep codec: codebook + gaps + codes)",
        "",
        "Each coder at the index width (in brackets) that gives it the fewest bytes. The Huffman column is the "
        "committed file's tensor.",
        "",
        "| layer | non-zeros | entropy bound B | Huffman B | ANS before B | ANS after B | after vs Huffman | after vs before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in layers:
        lines.append(
            f"| {r['layer']} | {r['nonzero']:,} | {r['entropy_tensor_bytes']:,.0f} ({r['index_bits']}) | "
            f"{r['huffman_tensor_bytes']:,} ({r['huffman_index_bits']}) | {r['ans_counts_tensor_bytes']:,} "
            f"({r['ans_counts_index_bits']}) | {r['ans_tensor_bytes']:,} ({r['ans_index_bits']}) | "
            f"{100 * (r['ans_tensor_bytes'] / r['huffman_tensor_bytes'] - 1):+.1f} % | "
            f"{100 * (r['ans_tensor_bytes'] / r['ans_counts_tensor_bytes'] - 1):+.1f} % |"
        )
    total = {k: sum(r[k] for r in layers) for k in ("huffman_tensor_bytes", "ans_counts_tensor_bytes", "ans_tensor_bytes")}
    lines.append(
        f"| all deep tensors | {sum(r['nonzero'] for r in layers):,} | "
        f"{sum(r['entropy_tensor_bytes'] for r in layers):,.0f} | {total['huffman_tensor_bytes']:,} | "
        f"{total['ans_counts_tensor_bytes']:,} | {total['ans_tensor_bytes']:,} | "
        f"{100 * (total['ans_tensor_bytes'] / total['huffman_tensor_bytes'] - 1):+.1f} % | "
        f"{100 * (total['ans_tensor_bytes'] / total['ans_counts_tensor_bytes'] - 1):+.1f} % |"
    )
    for r in layers:
        if "by_width" not in r:
            continue
        lines += [
            "",
            f"## {r['layer']} at each index width",
            "",
            "| index bits | entries | gaps: distinct | gaps entropy B | gaps ANS B | gaps ANS over | codes ANS over | tensor B (ANS) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["by_width"]:
            g, c = row["gaps"], row["codes"]
            lines.append(
                f"| {row['index_bits']} | {g['symbols']:,} | {g['distinct']} | {g['entropy_bytes']:,.0f} | {g['ans_bytes']:,} | "
                f"{pct(g['ans_overhead_percent'])} | {pct(c['ans_overhead_percent'])} | {row['tensor_bytes']:,} |"
            )
    lines += ["", "## Against the 1 % target", ""] + conclusions(layers)
    return "\n".join(lines) + "\n"


def log2_nml_regret(distinct: int, n: int) -> float:
    """``log2 C(D, n)``: the regret of the normalized maximum likelihood code, in bits.

    For streams of ``n`` symbols over a given alphabet of ``D`` symbols, the NML code (Shtarkov
    1987) spends exactly ``n * H_empirical + log2 C(D, n)`` bits on every stream, and any other
    code spends more than that on some stream: it is the least overhead over the empirical
    entropy that an order-0 code can *guarantee*. ``C`` by the recurrence of Kontkanen and
    Myllymaki (2007): ``C(1) = 1``, ``C(2) = sum_k binom(n, k) (k/n)^k ((n-k)/n)^(n-k)``,
    ``C(d + 2) = C(d + 1) + n/d C(d)``, in logarithms.
    """
    k = np.arange(n + 1)
    log_binomial = math.lgamma(n + 1) - np.array([math.lgamma(x + 1) + math.lgamma(n - x + 1) for x in k])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = log_binomial + np.where(k > 0, k * np.log(k / n), 0.0) + np.where(k < n, (n - k) * np.log((n - k) / n), 0.0)
    log_c = [0.0, float(np.logaddexp.reduce(terms))]  # ln C(1), ln C(2)
    for d in range(1, distinct - 1):
        log_c.append(float(np.logaddexp(log_c[-1], math.log(n / d) + log_c[-2])))
    return log_c[distinct - 1] / math.log(2)


def conclusions(layers: list[dict]) -> list[str]:
    """The 1 % target stream by stream, and what the overhead is made of, from the measured figures."""
    rows = [(f"{r['layer']} {sname}", s) for r in layers for sname, s in r["streams"].items() if s["entropy_bytes"]]
    within = [f"{name} ({pct(s['ans_overhead_percent'])})" for name, s in rows if s["ans_overhead_percent"] <= TARGET_PERCENT]
    nml_low = [f"{name} ({s['nml_regret_percent']:.2f} %)" for name, s in rows if s["nml_regret_percent"] <= TARGET_PERCENT]
    beats = [name for name, s in rows if s["ans_overhead_percent"] < s["nml_regret_percent"]]
    lines = [
        f"**Within {TARGET_PERCENT:g} % of the empirical entropy, model header and final state included:** "
        + (", ".join(within) if within else "none")
        + f". Above it: {len(rows) - len(within)} of {len(rows)} streams:",
        "",
        "| stream | symbols | distinct | entropy B | 1 % of it B | ANS over B | of it header B | of it payload B | "
        "NML regret B | NML regret |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in rows:
        if s["ans_overhead_percent"] <= TARGET_PERCENT:
            continue
        over = s["ans_bytes"] - s["entropy_bytes"]
        lines.append(
            f"| {name} | {s['symbols']:,} | {s['distinct']} | {s['entropy_bytes']:,.1f} | {s['entropy_bytes'] / 100:,.1f} | "
            f"{over:,.1f} ({pct(s['ans_overhead_percent'])}) | {s['ans_header_bytes']} | {over - s['ans_header_bytes']:,.1f} | "
            f"{s['nml_regret_bytes']:,.1f} | {s['nml_regret_percent']:.2f} % |"
        )
    lines += [
        "",
        "*NML regret*: `log2 C(D, n)`, the overhead over the empirical entropy of the normalized maximum "
        "likelihood code (Shtarkov 1987; computed exactly with the recurrence of Kontkanen and Myllymaki 2007). "
        "It spends exactly that on *every* stream of n symbols over the D symbols, and any other order-0 code, "
        "static or adaptive, spends more on some stream: it is the least overhead a code can guarantee, even "
        "one told the alphabet for free. It is at most 1 % only for "
        + (", ".join(nml_low) if nml_low else "none of the streams")
        + "; for every other stream no code can promise 1 %.",
        "",
        "A code can still beat that regret on a particular stream by betting on its structure: the binned model "
        "bets that neighbouring symbols have similar frequencies (and that rare gaps are spread thin). Ours "
        "comes in under the NML regret, alphabet and final state included, on "
        + (", ".join(beats) if beats else "no stream")
        + ". What remains is made of:",
        "",
        "- **The information the empirical entropy gets for free.** A large layer's gap stream has a few hundred "
        "distinct gaps, most in a long tail of values seen once or twice (column *of them once* above). The "
        "empirical entropy prices each at its own frequency, as if which values occur were known; a code has to "
        "say it: in the header (the count model lists every value with its count) or in the payload (the binned "
        "model spreads a shared mass over the bin, log2 of its width per occurrence). The binned model's header is "
        "a fraction of the count model's, and its payload pays the rest (the *w/o header* column).",
        "- **The coder's final state.** rANS starts from a 32-bit state that the decoder must end on, and writes "
        "whole 32-bit words: about 5 bytes over the ideal code length (3 to 7 on random streams) whatever the "
        "stream's size; on streams of a hundred bytes or less that alone is several per cent (LeNet-300-100 fc3, "
        "LeNet-5 conv1).",
        "- **The index width.** A narrower gap field folds the tail into fillers (tables per width): the gap "
        "stream gets fewer distinct values and comes within 1 % of *its* entropy, but the tensor grows, because "
        "fillers add entries to both streams. The deep codec keeps the width with the fewest bytes, the right "
        "criterion, and the overheads above are those of the streams it writes.",
    ]
    return lines


def main() -> None:
    report = {
        "machine": machine(constriction=version("constriction")),
        "sources": {model: str(path.relative_to(RESULTS.parent.parent)) for model, path in RESULT_FILES.items()},
        "layers": [bench_layer(name, layer, record) for name, layer, record in real_layers()],
    }
    text = markdown(report)
    write_results("entropy", report, text)
    print(text)


if __name__ == "__main__":
    main()
