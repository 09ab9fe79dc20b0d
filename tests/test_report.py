import json

import numpy as np
import pytest
import torch

import weightcodec
from weightcodec import container, report
from weightcodec.errors import EncodeError
from weightcodec.recipe import MAX_STORED_MATCHES, clusters_asked


@pytest.fixture(scope="module")
def wcz():
    torch.manual_seed(0)
    state = {
        "fc1.weight": torch.randn(60, 40),
        "fc1.bias": torch.randn(60),
        "fc2.weight": torch.randn(10, 60),
        "empty": torch.zeros(0, 3),
    }
    recipe = {
        "rule": [
            {"match": "fc1.weight", "method": "deep", "sparsity": 0.9, "clusters": 16, "index_bits": 4},
            {"match": "fc2.weight", "method": "weightless", "sparsity": 0.8, "clusters": 4, "t": 6},
            {"match": "empty", "method": "raw"},
        ]
    }
    return container.from_bytes(weightcodec.compress(state, recipe))


def rows_by_name(summary):
    return {row["name"]: row for row in summary["tensors"]}


def test_summary_figures(wcz):
    summary = report.summarize(wcz)
    rows = rows_by_name(summary)
    deep = rows["fc1.weight"]
    assert deep["shape"] == [60, 40] and deep["codec"] == "deep" and deep["elements"] == 2400
    assert deep["nonzero"] == 240 and deep["nonzero_percent"] == pytest.approx(10.0)
    assert deep["bytes"] == sum(deep["section_bytes"].values()) == deep["describe"]["bytes"]
    assert set(deep["section_bytes"]) == {"codebook", "gaps", "codes"}
    assert deep["ratio"] == pytest.approx(2400 * 4 / deep["bytes"])
    assert deep["overhead_percent"] == pytest.approx(100 * (deep["bytes"] - deep["bound_bytes"]) / deep["bound_bytes"])
    assert deep["describe"]["index_bits"] == 4
    bias = rows["fc1.bias"]
    assert bias["codec"] == "raw" and bias["bytes"] == 240 and bias["overhead_percent"] == 0 and bias["ratio"] == 1
    assert rows["empty"]["ratio"] is None and rows["empty"]["nonzero_percent"] == 0
    weightless = rows["fc2.weight"]["describe"]
    assert weightless["n"] == 120 and weightless["t"] == 6
    assert weightless["expected_false_positives"] == pytest.approx(480 * 4 / 64)
    assert rows["fc2.weight"]["nonzero"] == 120 + weightless["measured_false_positives"]
    totals = summary["totals"]
    assert totals["file_bytes"] == wcz.file_bytes == totals["header_bytes"] + totals["payload_bytes"]
    assert totals["float32_bytes"] == 4 * (2400 + 60 + 600)
    assert totals["ratio"] == pytest.approx(totals["float32_bytes"] / wcz.file_bytes)
    json.dumps(summary, allow_nan=False)  # plain JSON


def test_table_layout(wcz):
    text = report.format_table(report.summarize(wcz))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["name", "shape", "codec", "nz"]
    assert set(lines[1]) <= {"-", " "}
    deep = next(line for line in lines if line.startswith("fc1.weight"))
    assert "60x40" in deep and "codebook" in deep and "gaps" in deep and "10.0" in deep
    raw = next(line for line in lines if line.startswith("fc1.bias"))
    assert " - " in raw and "data 240" in raw
    assert next(line for line in lines if line.startswith("TOTAL (file)"))
    weightless_header = next(i for i, line in enumerate(lines) if line.startswith("weightless"))
    assert lines[weightless_header].split() == ["weightless", "n", "m", "t", "expected", "FP", "measured", "FP"]
    assert lines[weightless_header + 2].split()[:4] == ["fc2.weight", "120", str(rows_by_name(report.summarize(wcz))["fc2.weight"]["describe"]["m"]), "6"]


def test_table_shows_shared_values_used_and_asked(wcz):
    summary = report.summarize(wcz)
    assert {row["name"]: row["clusters_asked"] for row in summary["tensors"]} == {
        "fc1.weight": 16, "fc1.bias": None, "fc2.weight": 4, "empty": None}
    column = report.format_table(summary).splitlines()[0].index("K (asked)") + len("K (asked)")
    cells = {line.split()[0]: line[:column].split()[-2:] for line in report.format_table(summary).splitlines()[2:6]}
    assert cells["fc1.weight"] == ["16", "(16)"] and cells["fc2.weight"] == ["4", "(4)"]
    assert cells["fc1.bias"][-1] == "-" and cells["empty"][-1] == "-"


def test_a_tensor_with_fewer_distinct_values_than_asked_shows_both():
    state = {"w": torch.tensor([[0.0, 0.5, -1.0], [0.5, 2.0, 0.0]])}  # 3 distinct non-zeros, stored as is
    summary = report.summarize(container.from_bytes(weightcodec.compress(state, {"rule": [
        {"match": "w", "method": "deep", "clusters": 8}]})))
    row = summary["tensors"][0]
    assert (row["describe"]["clusters"], row["clusters_asked"]) == (3, 8)
    assert "3 (8)" in report.format_table(summary).splitlines()[2]


def test_a_file_without_a_readable_recipe_shows_only_what_is_used(wcz):
    for metadata in ({}, {"recipe": "[[[not json"}, {"recipe": '{"rule": 5}'}):
        stripped = container.from_bytes(container.to_bytes(list(wcz.records), metadata))
        rows = rows_by_name(report.summarize(stripped))
        assert rows["fc1.weight"]["clusters_asked"] is None
        assert " 16 " in next(line for line in report.format_table(report.summarize(stripped)).splitlines()
                              if line.startswith("fc1.weight"))


def test_a_crafted_recipe_is_not_matched_in_quadratic_time(wcz):
    rules = [{"match": f"r{i}", "method": "deep"} for i in range(MAX_STORED_MATCHES // 2 + 1)] + [{"match": "*", "method": "deep"}]
    text = json.dumps({"rule": rules})
    assert clusters_asked(text, ["a"]) == {"a": 32}
    with pytest.raises(EncodeError, match="name-rule pairs to match"):
        clusters_asked(text, ["a", "b"])
    crafted = container.from_bytes(container.to_bytes(list(wcz.records), {"recipe": text}))
    assert all(row["clusters_asked"] is None for row in report.summarize(crafted)["tensors"])


def test_headline_reads_only_the_header(wcz):
    line = report.headline(wcz)
    assert line.startswith("4 tensors, 3060 values, ")
    assert f"{wcz.file_bytes} bytes (header {wcz.header_bytes})" in line


def test_plot_writes_a_png(wcz, tmp_path):
    report.plot(wcz, report.summarize(wcz), tmp_path / "out.png")
    png = (tmp_path / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_plot_of_raw_only_file(tmp_path):
    wcz = container.from_bytes(weightcodec.compress({"b": torch.arange(4.0)}))
    report.plot(wcz, report.summarize(wcz), tmp_path / "raw.png")
    assert (tmp_path / "raw.png").stat().st_size > 0


def test_nonzero_counts_come_from_the_decoded_tensor(wcz):
    rows = rows_by_name(report.summarize(wcz))
    assert rows["fc1.weight"]["nonzero"] == int(np.count_nonzero(wcz.decode("fc1.weight")))
