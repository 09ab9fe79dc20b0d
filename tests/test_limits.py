"""Reader limits on hostile files whose checksums are all valid (built through the container API).

A few header bytes may claim a huge tensor; the reader must stay bounded: decoding a tensor
costs at most about twice its output bytes (measured in a subprocess), a whole file is checked
against a memory budget before anything is decoded, ``inspect`` costs what the file costs,
no header value ends as an internal error, and the cost is linear in the number of tensors.
"""

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import weightcodec
from weightcodec import cli, container, tensors
from weightcodec.codecs import Encoded, ans, deep, uniform, weightless
from weightcodec.errors import CorruptFileError, MemoryBudgetError

SRC = str(Path(weightcodec.__file__).resolve().parents[1])
MEASURED_ELEMENTS = 2**24  # a 64 MiB float32 output: large against the interpreter's noise
ONE = np.float32([1.0]).tobytes()
HUFFMAN_ONE_SYMBOL = b"\x00\x00"  # varint 0 (one distinct symbol), varint symbol 0
ANS_ONE_SYMBOL = b"\x05\x00"  # varint 4 * 1 + 1 (one distinct symbol), varint symbol 0


def deep_record(name, shape, entries, *, entropy="huffman", codebook=ONE, gaps=None, codes=None):
    one = HUFFMAN_ONE_SYMBOL if entropy == "huffman" else ANS_ONE_SYMBOL
    sections = {"codebook": codebook, "gaps": one if gaps is None else gaps, "codes": one if codes is None else codes}
    if entries == 0:
        sections = {"codebook": b"", "gaps": b"", "codes": b""}
    meta = {"index_bits": 1, "entropy": entropy, "entries": entries}
    return container.TensorRecord(name, "float32", tuple(shape), Encoded("deep", meta, sections))


def weightless_record(name, shape):
    """An all-zero weightless layer (no keys): a valid file whatever ``shape`` claims."""
    meta = {"filter": "bloomier", "t": 8, "K": 0, "n": 0, "m": 0, "k": 3, "seed": 0}
    return container.TensorRecord(name, "float32", tuple(shape), Encoded("weightless", meta, {"codebook": b"", "table": b""}))


def write(path, records):
    container.write(path, records)
    return path


# ----------------------------------------------------------------------------- 1. memory per tensor
# Every entry of a dense layer: gap 0 (one-symbol stream), codes 0/1 drawn at random. The
# Huffman code of two equiprobable symbols is one bit each ("0" -> 0, "1" -> 1), so its payload
# is the random bits themselves, after the table: varint L=1, count[1]=2, symbols 0, 1.


@pytest.fixture(scope="module")
def measured_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(0)
    n = MEASURED_ELEMENTS
    bits = rng.integers(0, 256, n // 8, dtype=np.uint8)
    codes = np.unpackbits(bits)  # MSB first, as the Huffman payload is read
    codebook = np.float32([-0.5, 2.0]).tobytes()
    expected_sum = float(np.sum(np.where(codes == 1, 2.0, -0.5)))
    steps_of_half = (rng.integers(-3, 4, n) * 0.5).astype(np.float32)  # levels -3..3 at step 0.5
    files = {
        "deep-huffman": deep_record("w", (n,), n, codebook=codebook, codes=b"\x01\x02\x00\x01" + bits.tobytes()),
        # the count model of two equiprobable symbols, as ans_encode(codes, model="counts") writes it
        "deep-ans": deep_record("w", (n,), n, entropy="ans", codebook=codebook,
                                codes=ans._count_layout(np.array([0, 1]), codes, np.array([1, 1]))),
        "deep-huffman-one-symbol": deep_record("w", (n,), n),  # the issue's file, at 2**24
        "deep-ans-one-symbol": deep_record("w", (n,), n, entropy="ans"),
        "weightless": container.TensorRecord(
            "w", "float32", (n,), weightless.encode(np.eye(1, n, dtype=np.float32)[0], t=8, filter="ribbon")
        ),
        "raw": tensors.encode_tensor("w", torch.ones(n)),
        "uniform": container.TensorRecord("w", "float32", (n,), uniform.encode(steps_of_half, step=0.5)),
    }
    # weightless: the one stored 1.0, and about one zero in 2**t = 256 decoding to it
    sums = {"deep-huffman": expected_sum, "deep-ans": expected_sum, "deep-huffman-one-symbol": float(n),
            "deep-ans-one-symbol": float(n), "weightless": 1 + (n - 1) / 256, "raw": float(n),
            "uniform": float(steps_of_half.sum(dtype=np.float64))}
    paths = {name: str(write(folder / f"{name}.wcz", [rec])) for name, rec in files.items()}
    small = {name: str(write(folder / f"{name}-small.wcz", [_small(rec)])) for name, rec in files.items()}
    return paths, small, sums


def _small(record):
    """A tiny file of the same codec, decoded first to load lazy imports and compiled kernels."""
    array = np.zeros(64, dtype=np.float32)
    array[[3, 9]] = [0.5, 1.5]
    meta = record.encoded.meta
    if record.encoded.codec == "raw":
        return tensors.encode_tensor("w", torch.ones(8))
    if record.encoded.codec == "deep":
        return container.TensorRecord("w", "float32", (64,), deep.encode(array, entropy=meta["entropy"], index_bits=2))
    if record.encoded.codec == "uniform":
        return container.TensorRecord("w", "float32", (64,), uniform.encode(array, step=0.5))
    return container.TensorRecord("w", "float32", (64,), weightless.encode(array, t=8, filter=meta["filter"]))


# Peak resident memory of a stretch of code, in a fresh interpreter. The peak (VmHWM) is reset
# through /proc/self/clear_refs where Linux allows it; ru_maxrss cannot be reset and, on Linux,
# even carries the parent's peak across fork and exec, so it is only the fallback.
RSS = r"""
import json, resource, sys

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False

def peak(resettable):
    if resettable:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


def run_measured(script, *args):
    """Run ``RSS + script`` in a fresh interpreter; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RSS + script, *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


# Parse the file (its bytes are the file's cost), then measure decoding it, above the resident
# memory just before.
MEASURE = r"""
from weightcodec import container, tensors

results = {}
for name, (path, small) in json.loads(sys.argv[1]).items():
    tensors.decode_file(container.read(small))
    wcz = container.read(path)
    resettable = reset_peak()
    base = rss()
    state = tensors.decode_file(wcz)
    top = peak(resettable)
    out = sum(t.numel() * t.element_size() for t in state.values())
    results[name] = {"extra": top - base, "output": out, "sum": float(sum(float(t.double().sum()) for t in state.values()))}
    del state, wcz
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def measured(measured_files):
    paths, small, _ = measured_files
    return run_measured(MEASURE, json.dumps({name: (paths[name], small[name]) for name in paths}))[0]


@pytest.mark.parametrize(
    "name", ["deep-huffman", "deep-ans", "deep-huffman-one-symbol", "deep-ans-one-symbol", "weightless", "raw", "uniform"]
)
def test_decoding_a_tensor_costs_at_most_twice_its_output(measured, measured_files, name):
    result = measured[name]
    assert result["output"] == 4 * MEASURED_ELEMENTS
    assert result["sum"] == pytest.approx(measured_files[2][name], rel=0.02)  # decoded right, not just small
    assert result["extra"] <= 2 * result["output"], f"{name}: {result['extra'] / result['output']:.2f}x the output"


def test_the_issue_file_is_a_few_hundred_bytes():
    data = container.to_bytes([deep_record("w", (2**26,), 2**26)])
    assert len(data) < 300  # and decodes to 256 MiB
    assert container.from_bytes(data).describe("w", measure=False)["entries"] == 2**26


# ----------------------------------------------------------------------------- 2. a budget for the whole file

GIB = 2**30


@pytest.fixture
def three_gib(tmp_path):
    """Three all-zero deep layers of 1 GiB each (a few hundred bytes of file)."""
    return write(tmp_path / "three.wcz", [deep_record(f"w{i}", (GIB // 4,), 0) for i in range(3)])


def test_three_tensors_are_refused_together(three_gib):
    wcz = container.read(three_gib)
    assert wcz.decoded_bytes == 3 * GIB
    wcz.check_budget(3 * GIB)  # exactly the budget: accepted
    for name in ("w0", "w1", "w2"):
        container.check_budget([wcz.record(name)], 3 * GIB - 1)  # each alone fits
    with pytest.raises(MemoryBudgetError) as error:
        weightcodec.load(three_gib, max_bytes=3 * GIB - 1)
    message = str(error.value)
    assert "decoding 3 tensors needs 3.0 GiB (3221225472 bytes), more than the budget of 3.0 GiB (3221225471 bytes) (max_bytes)" in message
    assert "`weightcodec decode --max-memory SIZE`" in message and "`weightcodec.load(path, max_bytes=...)`" in message
    with pytest.raises(MemoryBudgetError):
        wcz.arrays(max_bytes=3 * GIB - 1)


def test_the_default_budget_is_the_memory_available(tmp_path):
    available = container.available_memory()
    assert available is None or available > 0
    path = write(tmp_path / "huge.wcz", [deep_record(f"w{i}", (2**40,), 0) for i in range(3)])  # 12 TiB
    with pytest.raises(MemoryBudgetError, match=r"\(the memory available\)"):
        weightcodec.load(path)


def test_cli_decode_max_memory(three_gib, tmp_path, capsys):
    # each tensor is decoded straight into the output file, one at a time: each (1 GiB) is checked
    for suffix in (".pt", ".safetensors"):
        out = tmp_path / f"out{suffix}"
        assert cli.main(["decode", str(three_gib), "-o", str(out), "--max-memory", "512M"]) == 1
        assert "--max-memory SIZE" in capsys.readouterr().err and not out.exists()
    assert cli.main(["decode", str(three_gib), "-o", str(out), "--max-memory", "nonsense"]) == 2


def test_a_normal_file_decodes_within_a_small_budget(tmp_path):
    path = write(tmp_path / "small.wcz", [deep_record("w", (1000,), 1000)])
    assert weightcodec.load(path, max_bytes=4000)["w"].sum() == 1000
    with pytest.raises(MemoryBudgetError):
        weightcodec.load(path, max_bytes=3999)


# ----------------------------------------------------------------------------- 3. inspect reads headers

INSPECT = r"""
from weightcodec import cli

small, runs = sys.argv[1], json.loads(sys.argv[2])
cli.main(["inspect", small])  # imports and compiled kernels loaded
results = {}
for name, argv in runs.items():
    resettable = reset_peak()
    base = rss()
    code = cli.main(argv)
    results[name] = {"code": code, "extra": peak(resettable) - base}
print(json.dumps(results))
"""

CLAIMS = {  # a file of a few hundred bytes, and the options inspect gets
    "weightless-2**33": (weightless_record("w", (2**33,)), ["--max-memory", "1G"]),  # the issue's 299-byte file
    "weightless-2**40": (weightless_record("w", (2**40,)), []),  # over any machine's available memory
    "deep-2**30": (deep_record("w", (2**30,), 2**30), ["--max-memory", "1G"]),  # one-symbol streams
    "deep-2**40": (deep_record("w", (2**40,), 0), []),
}


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspect")
    small = write(folder / "small.wcz", [deep_record("s", (8,), 8), weightless_record("z", (8,))])
    runs, sizes = {}, {}
    for name, (record, options) in CLAIMS.items():
        path = write(folder / f"{name}.wcz", [record])
        sizes[name] = path.stat().st_size
        runs[name] = ["inspect", str(path), *options]
    results, stdout = run_measured(INSPECT, small, json.dumps(runs))
    return results, stdout, sizes


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_inspect_costs_what_the_file_costs(inspected, name):
    results, stdout, sizes = inspected
    assert sizes[name] < 400
    assert results[name]["code"] == 0
    assert results[name]["extra"] < 64 * 2**20  # against 4 GiB .. 4 TiB claimed
    assert stdout.count("note: w: not decoded") == len(CLAIMS) and "--max-memory SIZE" in stdout


def test_inspect_measures_within_the_budget(tmp_path, capsys):
    path = write(tmp_path / "f.wcz", [deep_record("w", (1000,), 1000)])
    assert cli.main(["inspect", str(path), "--json", "--max-memory", "4000"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tensors"][0]["nonzero"] == 1000 and summary["notes"] == []
    assert cli.main(["inspect", str(path), "--json", "--max-memory", "3999"]) == 0
    summary = json.loads(capsys.readouterr().out)
    row = summary["tensors"][0]
    assert row["nonzero"] is None and row["describe"]["entries"] == 1000 and summary["totals"]["nonzero"] is None
    assert summary["notes"] == [
        "w: not decoded (needs 4000 bytes, above the budget of 3999); figures that need a decode are left out, "
        "raise the budget with --max-memory SIZE"
    ]


# ----------------------------------------------------------------------------- 4. no exit 3 from file content


def craft(header: bytes, data: bytes = b"") -> bytes:
    fixed = container.PREAMBLE.pack(container.MAGIC, 1, 0, len(header), 0)[:16]
    return fixed + zlib.crc32(header, zlib.crc32(fixed)).to_bytes(4, "little") + header + data


def entry_json(**fields) -> str:
    base = {"name": "t", "dtype": "float32", "shape": [1], "codec": "raw", "meta": {"dtype": "<f4"},
            "sections": [["data", 0, 4, zlib.crc32(b"\0" * 4)]]}
    return json.dumps({**base, **fields})


def with_entry(text: str) -> bytes:
    return craft(('{"metadata": {}, "tensors": [' + text + "]}").encode(), b"\0" * 4)


MALFORMED_HEADERS = {
    "5000-digit integer": craft(b'{"metadata": {}, "tensors": [], "x": ' + b"9" * 5000 + b"}"),
    "5000-digit shape": with_entry(entry_json().replace('"shape": [1]', '"shape": [' + "1" * 5000 + "]")),
    "NaN": craft(b'{"metadata": {}, "tensors": [], "x": NaN}'),
    "Infinity": craft(b'{"metadata": {}, "tensors": [], "x": -Infinity}'),
    "float beyond range": craft(b'{"metadata": {}, "tensors": [], "x": 1e999}'),
    "deep nesting": craft(b'{"tensors": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "repeated key": craft(b'{"metadata": {}, "tensors": [], "tensors": []}'),
    "lone surrogate in a name": with_entry(entry_json(name="\udc80")),
    "lone surrogate in metadata": craft(b'{"metadata": {"a": "\\udc80"}, "tensors": []}'),
    "huge shape": with_entry(entry_json(shape=[10**4000])),
    "huge section offset": with_entry(entry_json(sections=[["data", 10**4000, 4, 0]])),
    "float shape": with_entry(entry_json(shape=[1e300])),
    "deep meta huge int": with_entry(entry_json(
        codec="deep", meta={"index_bits": 10**4000, "entropy": "huffman", "entries": 0},
        sections=[["codebook", 0, 4, zlib.crc32(b"\0" * 4)], ["gaps", 4, 0, 0], ["codes", 4, 0, 0]])),
    "deep meta entropy a list": with_entry(entry_json(
        codec="deep", meta={"index_bits": 1, "entropy": ["huffman"], "entries": 0},
        sections=[["codebook", 0, 4, zlib.crc32(b"\0" * 4)], ["gaps", 4, 0, 0], ["codes", 4, 0, 0]])),
    "raw dtype a list": with_entry(entry_json(meta={"dtype": ["<f4"]})),
    "raw without data section": with_entry(entry_json(sections=[["other", 0, 4, zlib.crc32(b"\0" * 4)]])),
    "weightless filter a dict": with_entry(entry_json(
        codec="weightless", meta={"filter": {}, "t": 8, "K": 0, "n": 0}, shape=[4],
        sections=[["codebook", 0, 0, 0], ["table", 0, 4, zlib.crc32(b"\0" * 4)]])),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_HEADERS))
def test_malformed_header_values_are_clean_errors(tmp_path, capsys, name):
    data = MALFORMED_HEADERS[name]
    with pytest.raises(CorruptFileError):
        wcz = container.from_bytes(data)
        wcz.arrays()
    path = tmp_path / "bad.wcz"
    path.write_bytes(data)
    for command in (["decode", str(path), "-o", str(tmp_path / "o.pt")], ["inspect", str(path)]):
        assert cli.main(command) == 1, capsys.readouterr().err
        last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
        assert last_line.startswith("weightcodec: error:") and "internal error" not in last_line


def test_json_failures_say_corrupted_header():
    for name in ("5000-digit integer", "NaN", "float beyond range", "repeated key", "deep nesting"):
        with pytest.raises(CorruptFileError, match="^corrupted header: not valid UTF-8 JSON"):
            container.from_bytes(MALFORMED_HEADERS[name])


# ----------------------------------------------------------------------------- 5. linear in the number of tensors


class CountingName(str):
    """A tensor name that counts its equality tests: a list scan per tensor makes n**2 of them."""

    comparisons = 0

    def __eq__(self, other):
        CountingName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def empty_records(n, name=str):
    return [container.TensorRecord(name(f"t{i}"), "float32", (0,), Encoded("raw", {"dtype": "<f4"}, {"data": b""}))
            for i in range(n)]


def test_writer_and_reader_find_names_in_constant_time():
    n = 2000
    records = empty_records(n, CountingName)
    CountingName.comparisons = 0
    data = container.to_bytes(records)
    assert CountingName.comparisons <= n  # names.count() per name made n**2 = 4,000,000
    wcz = container.WczFile({}, tuple(records), len(data), 0)
    CountingName.comparisons = 0
    state = tensors.decode_file(wcz)
    for rec in records:
        wcz.decode(rec.name)
    assert len(state) == n and CountingName.comparisons <= 2 * n


def test_forty_thousand_tensors_round_trip():
    records = empty_records(40_000)
    state = weightcodec.load_bytes(container.to_bytes(records))
    assert list(state) == [r.name for r in records] and all(t.shape == (0,) for t in state.values())
    with pytest.raises(Exception, match="repeated: 't7'"):
        container.to_bytes(records + records[7:8])
