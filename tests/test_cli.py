import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import weightcodec
import weightcodec.pipelines.reproduce
from weightcodec import cli, container
from weightcodec.codecs import weightless
from weightcodec.cli import main
from weightcodec.errors import FormatError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def run(capsys):
    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    state = {
        "fc1.weight": torch.randn(30, 20),
        "fc1.bias": torch.randn(30),
        "fc2.weight": torch.randn(4, 30),
        "clustered": torch.tensor([[0.0, 0.5, 0.5], [-1.0, 0.0, 0.5]]),
    }
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path, state


def assert_one_line_error(err: str, text: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("weightcodec: error: ") and text in lines[0], lines[0]
    assert "Traceback" not in err


def only_inputs_left(folder: Path, *names: str):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# ----------------------------------------------------------------------------- the commands


def test_encode_decode_roundtrip_pt_and_safetensors(run, weights, tmp_path):
    path, state = weights
    code, out, err = run("encode", path, "-o", tmp_path / "m.wcz", "--codec", "deep", "--clusters", "8",
                         "--sparsity", "0.5", "--index-bits", "auto", "--quiet")
    assert code == 0 and err == ""
    assert out.startswith(f"wrote {tmp_path / 'm.wcz'}: 4 tensors, 756 values")
    assert run("decode", tmp_path / "m.wcz", "-o", tmp_path / "back.pt", "-q")[0] == 0
    assert run("decode", tmp_path / "m.wcz", "-o", tmp_path / "back.safetensors", "-q")[0] == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back.keys() == state.keys() and load_file(tmp_path / "back.safetensors").keys() == state.keys()
    assert torch.equal(back["clustered"], state["clustered"])  # <= K values: stored as is, lossless
    assert torch.equal(back["fc1.bias"], state["fc1.bias"])  # 1-D: raw
    assert (back["fc1.weight"] == 0).float().mean() == 0.5 and torch.unique(back["fc1.weight"]).numel() <= 9


def test_encode_safetensors_input_with_weightless(run, weights, tmp_path):
    _, state = weights
    save_file(state, tmp_path / "m.safetensors")
    code, out, _ = run("-q", "encode", tmp_path / "m.safetensors", "-o", tmp_path / "w.wcz", "--codec", "weightless",
                       "-k", "4", "--t", "8", "--sparsity", "0.8", "--filter", "bloomier", "--seed", "7")
    assert code == 0
    records = {r.name: r.encoded for r in container.read(tmp_path / "w.wcz").records}
    assert records["fc1.weight"].codec == "weightless" and records["fc1.weight"].meta["t"] == 8
    assert records["fc1.bias"].codec == "raw"


@pytest.mark.parametrize("options", [["--codec", "deep", "--entropy", "huffman"], ["--codec", "deep", "--entropy", "ans"],
                                     ["--codec", "weightless", "--t", "6", "--filter", "bloomier"],
                                     ["--codec", "weightless", "--t", "6", "--filter", "ribbon"],
                                     ["--codec", "weightless", "--t", "6", "--filter", "fuse"],
                                     ["--codec", "weightless", "--t", "6", "--filter", "auto"],
                                     ["--codec", "weightless", "--t", "6"]])
def test_codec_options_pass_through(run, weights, tmp_path, options):
    path, _ = weights
    assert run("encode", path, "-o", tmp_path / "o.wcz", "-k", "4", "--sparsity", "0.75", "-q", *options)[0] == 0
    assert run("decode", tmp_path / "o.wcz", "-o", tmp_path / "o.pt", "-q")[0] == 0
    meta = {r.name: r.encoded.meta for r in container.read(tmp_path / "o.wcz").records}["fc1.weight"]
    if "--filter" in options and options[-1] != "auto":
        assert options[-1] in meta.values()
    elif options[1] == "weightless":  # auto, the default: the file names the structure it built
        assert meta["filter"] in weightless.FILTERS
    else:
        assert options[-1] in meta.values()
    decoded = torch.load(tmp_path / "o.pt", weights_only=True)["fc1.weight"]
    assert int((decoded != 0).sum()) >= 150 and torch.unique(decoded).numel() <= 5


def test_encode_with_recipe(run, weights, tmp_path):
    path, _ = weights
    (tmp_path / "r.toml").write_text('[[rule]]\nmatch = "fc*"\nmethod = "deep"\nclusters = 4\n')
    assert run("encode", path, "-o", tmp_path / "r.wcz", "--recipe", tmp_path / "r.toml", "-q")[0] == 0
    codecs = {r.name: r.encoded.codec for r in container.read(tmp_path / "r.wcz").records}
    assert codecs == {"fc1.weight": "deep", "fc1.bias": "raw", "fc2.weight": "deep", "clustered": "raw"}


def test_encode_recipe_and_codec_options_conflict(run, weights, tmp_path):
    path, _ = weights
    (tmp_path / "r.toml").write_text('[[rule]]\nmatch = "*"\nmethod = "raw"\n')
    code, _, err = run("encode", path, "-o", tmp_path / "x.wcz", "--recipe", tmp_path / "r.toml", "--clusters", "4")
    assert code == 1
    assert_one_line_error(err, "give either --recipe or --codec with its options, not both (got --recipe and --clusters)")
    code, _, err = run("encode", path, "-o", tmp_path / "x.wcz")
    assert_one_line_error(err, "give --codec {raw,deep,weightless} (or --recipe R.toml)")


def test_inspect_table_json_and_plot(run, weights, tmp_path):
    path, _ = weights
    run("encode", path, "-o", tmp_path / "m.wcz", "--codec", "deep", "-k", "8", "--sparsity", "0.5", "-q")
    code, table, _ = run("inspect", tmp_path / "m.wcz")
    assert code == 0
    lines = table.splitlines()
    assert "value b" in lines[2] and "index b" in lines[2] and "ratio" in lines[2] and "over %" in lines[2]
    assert any(line.startswith("fc1.weight") and "deep" in line and "50.0" in line for line in lines)
    assert any(line.startswith("TOTAL (file)") for line in lines)
    code, text, _ = run("inspect", tmp_path / "m.wcz", "--json", "--plot", tmp_path / "m.png")
    summary = json.loads(text)
    assert code == 0 and summary["totals"]["file_bytes"] == (tmp_path / "m.wcz").stat().st_size
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_weightless_shows_false_positives(run, weights, tmp_path):
    path, _ = weights
    run("encode", path, "-o", tmp_path / "w.wcz", "--codec", "weightless", "-k", "4", "--t", "6", "--sparsity", "0.8", "-q")
    _, table, _ = run("inspect", tmp_path / "w.wcz")
    assert "expected FP" in table and "measured FP" in table


def test_compress_the_example_with_its_training_hook(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run("compress", "--recipe", EXAMPLES / "recipe.toml", "tiny_model:build", "-o", "tiny.wcz", "-q")
    assert code == 0, err
    assert "tiny.wcz" in out
    codecs = {r.name: r.encoded.codec for r in container.read(tmp_path / "tiny.wcz").records}
    assert codecs["embed.weight"] == "deep" and codecs["hidden.weight"] == "weightless" and codecs["head.weight"] == "raw"


def test_compress_the_example_to_a_target_error(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run("compress", "--recipe", EXAMPLES / "recipe_auto.toml", "tiny_model:build", "-o", "auto.wcz",
                         "--target-error", "72", "-q")  # fmt: skip
    assert code == 0, err
    valid, target = re.search(r"validation error ([\d.]+) % \(target ([\d.]+) %", out).groups()
    assert float(valid) <= float(target) == 72.0  # the flag overrides the recipe's 70
    wcz = container.read(tmp_path / "auto.wcz")
    assert wcz.metadata["target_error"] == "72.0" and {r.name: r.encoded.codec for r in wcz.records}["head.weight"] == "raw"
    assert run("compress", "--recipe", EXAMPLES / "recipe.toml", "tiny_model:build", "-o", "fixed.wcz", "-q")[0] == 0
    assert (tmp_path / "auto.wcz").stat().st_size < (tmp_path / "fixed.wcz").stat().st_size


def test_target_error_without_an_evaluation_function_says_what_to_add(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run("compress", "--recipe", EXAMPLES / "recipe.toml", "tiny_model:build", "-o", "t.wcz", "--target-error", "5")
    assert code != 0 and not (tmp_path / "t.wcz").exists()
    assert "add [auto] evaluate = 'module:function'" in err and "add [auto] n_valid = N" in err


def test_compress_a_state_dict_file(run, weights, tmp_path):
    path, _ = weights
    (tmp_path / "r.toml").write_text('[[rule]]\nmatch = "fc1.*"\nmethod = "deep"\nsparsity = 0.9\nclusters = 8\n')
    assert run("compress", "--recipe", tmp_path / "r.toml", path, "-o", tmp_path / "c.wcz", "-q")[0] == 0


def test_decode_into_onnx(run, tmp_path):
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 3))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter needs no onnxscript
        torch.onnx.export(model, (torch.randn(1, 20),), tmp_path / "m.onnx", dynamo=False)
    run("encode", tmp_path / "m.pt", "-o", tmp_path / "m.wcz", "--codec", "deep", "-k", "4", "--sparsity", "0.9", "-q")
    code, out, err = run("decode", tmp_path / "m.wcz", "--onnx", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    assert code == 0, err
    graph = onnx.load(tmp_path / "out.onnx").graph
    assert sorted(s.values.name for s in graph.sparse_initializer) == ["0.weight", "2.weight"]
    code, _, err = run("decode", tmp_path / "m.wcz", "--onnx", tmp_path / "m.onnx", "-o", tmp_path / "out.pt")
    assert code == 1 and "with --onnx the output must be an .onnx file" in err


def test_reproduce_calls_the_pipeline(run, monkeypatch):
    calls = []

    def reproduce(model, method, *, quick, seed, progress, data, threads, results_dir):
        calls.append((model, method, quick, seed, progress, data, threads, results_dir))
        return {"model": model, "method": method, "quick": quick, "baseline_test_error": 9.0, "test_error": 11.894,
                "file_bytes": 21903, "ratio": 48.66478050561285, "layers": [], "seconds": 95.4,
                "json_path": "r.json", "wcz_path": "r.wcz"}

    monkeypatch.setattr(weightcodec.pipelines.reproduce, "reproduce", reproduce)
    code, out, _ = run("reproduce", "lenet300", "--method", "deep", "--quick", "--seed", "3", "-q")
    assert code == 0 and calls == [("lenet300", "deep", True, 3, False, None, 1, Path("benchmarks/results"))]
    assert out.splitlines() == [
        "lenet300 --method deep --quick: a smoke run on a small training budget; its errors are far above a full run's",
        "figure                     this run  full run (committed)   paper",
        "baseline test error          9.00 %                0.93 %  1.64 %",
        "test error (decoded file)   11.89 %                1.27 %  1.58 %",
        "file                       21,903 B              19,734 B       -",
        "ratio vs float32              48.7x                 54.0x   40.0x",
        "took 95 s; wrote r.json and r.wcz",
    ]


def test_reproduce_threads_go_to_the_pipeline_one_by_default(run, monkeypatch):
    seen = []
    result = {"model": "lenet5", "method": "deep", "quick": False, "seconds": 1.0, "json_path": "r.json", "wcz_path": "r.wcz"}
    monkeypatch.setattr(weightcodec.pipelines.reproduce, "reproduce", lambda *a, threads, **k: seen.append(threads) or result)
    assert run("reproduce", "lenet5", "--threads", "3", "-q")[0] == 0 and run("reproduce", "lenet5", "-q")[0] == 0
    assert seen == [3, 1]
    assert run("reproduce", "lenet5", "--threads", "0")[0] == 2


def test_usage_errors_exit_2(run):
    assert run("encode")[0] == 2
    assert run("reproduce", "vgg16")[0] == 2
    assert run("encode", "x.pt", "-o", "y.wcz", "--index-bits", "five")[0] == 2
    assert run("--help")[0] == 0


# ----------------------------------------------------------------------------- bad input: one line, exit 1, nothing written


def test_missing_input(run, tmp_path):
    for args in (["encode", tmp_path / "nope.pt", "-o", tmp_path / "o.wcz", "--codec", "raw"],
                 ["decode", tmp_path / "nope.wcz", "-o", tmp_path / "o.pt"],
                 ["inspect", tmp_path / "nope.wcz"]):
        code, out, err = run(*args)
        assert code == 1 and out == ""
        assert_one_line_error(err, "nope.")
        assert "no such file" in err
    only_inputs_left(tmp_path)


def test_unreadable_input(run, tmp_path):
    (tmp_path / "folder.wcz").mkdir()
    code, _, err = run("decode", tmp_path / "folder.wcz", "-o", tmp_path / "o.pt")
    assert code == 1
    assert_one_line_error(err, "is a directory, expected a .wcz file")


STATE_DICT_KINDS = "a .pt/.pth written by torch.save(model.state_dict(), path), or a .safetensors file"


def test_encode_a_directory_says_so(run, tmp_path):
    (tmp_path / "weights").mkdir()
    code, out, err = run("encode", tmp_path / "weights", "-o", tmp_path / "o.wcz", "--codec", "deep")
    assert (code, out) == (1, "")
    assert err == f"weightcodec: error: {tmp_path / 'weights'}: is a directory, expected a state_dict file ({STATE_DICT_KINDS})\n"


def test_encode_an_empty_or_foreign_pt_gets_no_whole_model_hint(run, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("hello world")
    code, _, err = run("encode", tmp_path / "empty.pt", "-o", tmp_path / "o.wcz", "--codec", "deep")
    assert code == 1
    assert err == f"weightcodec: error: {tmp_path / 'empty.pt'}: the file is empty (0 bytes), expected a state_dict file ({STATE_DICT_KINDS})\n"
    code, _, err = run("encode", tmp_path / "notes.pt", "-o", tmp_path / "o.wcz", "--codec", "deep")
    assert code == 1
    assert err == (f"weightcodec: error: {tmp_path / 'notes.pt'}: not a file torch.load can read (KeyError); "
                   f"expected a state_dict file ({STATE_DICT_KINDS})\n")
    only_inputs_left(tmp_path, "empty.pt", "notes.pt")


def test_weightless_without_t_names_the_flag(run, weights, tmp_path):
    code, _, err = run("encode", weights[0], "-o", tmp_path / "o.wcz", "--codec", "weightless")
    assert code == 1
    assert err == ("weightcodec: error: --codec weightless needs --t T, the bits per filter cell: a pruned weight "
                   "decodes non-zero with probability K / 2**T (e.g. --t 10 with the default 32 clusters: 3.1 %)\n")


@pytest.mark.parametrize("command", [["decode", "-o", "out.pt"], ["inspect"]])
@pytest.mark.parametrize("content, message", [(b"", "the file is empty (0 bytes), not a .wcz file"),
                                              (b"PK\x03\x04 a zip", "not a .wcz file (wrong magic bytes)")])
def test_empty_or_foreign_wcz_names_the_file(run, tmp_path, command, content, message):
    (tmp_path / "in.wcz").write_bytes(content)
    code, out, err = run(command[0], tmp_path / "in.wcz", *[tmp_path / a if a.endswith(".pt") else a for a in command[1:]])
    assert (code, out) == (1, "")
    assert err == f"weightcodec: error: {tmp_path / 'in.wcz'}: {message}\n"
    only_inputs_left(tmp_path, "in.wcz")


def encoded_file(run, weights, tmp_path) -> bytes:
    path, _ = weights
    run("encode", path, "-o", tmp_path / "good.wcz", "--codec", "deep", "-k", "4", "-q")
    return (tmp_path / "good.wcz").read_bytes()


def decode_bad(run, tmp_path, data: bytes):
    (tmp_path / "bad.wcz").write_bytes(data)
    code, out, err = run("decode", tmp_path / "bad.wcz", "-o", tmp_path / "out.pt")
    assert code == 1 and out == ""
    assert not (tmp_path / "out.pt").exists() and not list(tmp_path.glob(".out.pt*"))
    return err


def test_corrupted_file_any_flipped_byte(run, weights, tmp_path):
    data = encoded_file(run, weights, tmp_path)
    for index in range(0, len(data), 7):  # every 7th byte; test_container flips every byte
        bad = bytearray(data)
        bad[index] ^= 0x01
        err = decode_bad(run, tmp_path, bytes(bad))
        assert_one_line_error(err, "")


def test_corrupted_section_names_the_tensor(run, weights, tmp_path):
    data = bytearray(encoded_file(run, weights, tmp_path))
    data[-3] ^= 0xFF
    assert_one_line_error(decode_bad(run, tmp_path, bytes(data)), "checksum mismatch, the file is corrupted")


def test_truncated_file(run, weights, tmp_path):
    data = encoded_file(run, weights, tmp_path)
    assert_one_line_error(decode_bad(run, tmp_path, data[:-10]), "file is truncated")
    assert_one_line_error(decode_bad(run, tmp_path, data[:12]), "file is truncated")


def test_wrong_magic(run, tmp_path):
    assert_one_line_error(decode_bad(run, tmp_path, b"PK\x03\x04 this is a zip"), "not a .wcz file (wrong magic bytes)")


def test_unsupported_version(run, weights, tmp_path):
    data = bytearray(encoded_file(run, weights, tmp_path))
    struct.pack_into("<H", data, 8, 7)
    err = decode_bad(run, tmp_path, bytes(data))
    assert_one_line_error(err, "file uses .wcz format 7.0, this weightcodec reads up to 2.x; upgrade weightcodec to read it")


def test_nan_weights(run, tmp_path):
    torch.save({"w": torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])}, tmp_path / "nan.pt")
    code, _, err = run("encode", tmp_path / "nan.pt", "-o", tmp_path / "o.wcz", "--codec", "deep", "-k", "1")
    assert code == 1
    assert_one_line_error(err, "w holds 1 NaN and 1 infinite values; compress a finite model")
    only_inputs_left(tmp_path, "nan.pt")


def test_k_larger_than_distinct_weights(run, weights, tmp_path):
    path, _ = weights
    code, _, err = run("encode", path, "-o", tmp_path / "o.wcz", "--codec", "deep", "-k", "200", "--sparsity", "0.9")
    assert code == 1
    assert_one_line_error(err, "fc1.weight: clusters=200 is larger than the 60 distinct non-zero weights left at sparsity 0.9")
    assert not (tmp_path / "o.wcz").exists()


def test_t_too_small_for_k(run, weights, tmp_path):
    path, _ = weights
    code, _, err = run("encode", path, "-o", tmp_path / "o.wcz", "--codec", "weightless", "-k", "16", "--t", "3")
    assert code == 1
    assert_one_line_error(err, "t=3 is too small for clusters=16: 8 cell values, need t >= 4")


def test_tensor_with_zero_elements(run, tmp_path):
    torch.save({"empty": torch.zeros(0, 8), "w": torch.randn(4, 4)}, tmp_path / "e.pt")
    code, _, err = run("encode", tmp_path / "e.pt", "-o", tmp_path / "o.wcz", "--codec", "deep")
    assert code == 1
    assert_one_line_error(err, "empty has zero elements (shape (0, 8)), nothing to deep-encode")
    assert run("encode", tmp_path / "e.pt", "-o", tmp_path / "o.wcz", "--codec", "raw", "-q")[0] == 0


def test_recipe_naming_no_parameters(run, weights, tmp_path):
    path, _ = weights
    (tmp_path / "r.toml").write_text('[[rule]]\nmatch = "conv*"\nmethod = "deep"\n')
    code, _, err = run("compress", "--recipe", tmp_path / "r.toml", path, "-o", tmp_path / "o.wcz")
    assert code == 1
    assert_one_line_error(err, "recipe rule 1 (match 'conv*') matches no compressible parameter")


def test_pickled_whole_model(run, tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "whole.pt")
    code, _, err = run("encode", tmp_path / "whole.pt", "-o", tmp_path / "o.wcz", "--codec", "deep")
    assert code == 1
    assert_one_line_error(err, "cannot load as a state_dict with weights_only=True")
    assert "torch.save(model.state_dict(), path)" in err
    only_inputs_left(tmp_path, "whole.pt")


def test_unwritable_output(run, weights, tmp_path):
    path, _ = weights
    code, _, err = run("encode", path, "-o", tmp_path / "no" / "dir" / "o.wcz", "--codec", "raw")
    assert code == 1
    assert_one_line_error(err, f"o.wcz: cannot write: folder {tmp_path / 'no' / 'dir'} does not exist")


def test_debug_shows_the_traceback(weights, tmp_path):
    with pytest.raises(FormatError):
        (tmp_path / "bad.wcz").write_bytes(b"nonsense")
        main(["--debug", "decode", str(tmp_path / "bad.wcz"), "-o", str(tmp_path / "o.pt")])


def test_internal_errors_say_so(run, monkeypatch, weights, tmp_path):
    import weightcodec.api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(weightcodec.api, "compress_file", broken)
    code, _, err = run("encode", weights[0], "-o", tmp_path / "o.wcz", "--codec", "raw")
    assert code == 3
    assert_one_line_error(err, "internal error (ZeroDivisionError: oops); rerun with --debug and report it")


# ----------------------------------------------------------------------------- the console script, in a subprocess

SRC = str(Path(weightcodec.__file__).resolve().parents[1])
CONSOLE = "import sys; from weightcodec.cli import console_main; sys.exit(console_main())"  # as pip's script does
# parse a decode command line, then run it, saying whether torch or numba was imported when parsing was done
SPY = """
import sys
from weightcodec import cli
cli.build_parser().parse_args(sys.argv[1:])
print("torch or numba after parsing:", "torch" in sys.modules or "numba" in sys.modules)
sys.exit(cli.main(sys.argv[1:]))
"""


def python(*args) -> subprocess.CompletedProcess:
    """``python ARGS`` on these sources, its stdout block-buffered into a pipe, as a script's output usually is."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env={**env, "PYTHONPATH": SRC})


def test_the_console_script_writes_what_main_writes_and_exits_with_its_code(run, weights, tmp_path):
    scripts = tomllib.loads((Path(SRC).parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"weightcodec": "weightcodec.cli:console_main"}
    wcz = tmp_path / "m.wcz"
    assert run("encode", weights[0], "-o", wcz, "--codec", "weightless", "--t", "10", "-q")[0] == 0
    assert run("decode", wcz, "-o", tmp_path / "main.pt", "-q")[0] == 0
    done = python("-c", CONSOLE, "decode", wcz, "-o", tmp_path / "console.pt", "-q")
    # stdout is a pipe (block-buffered): the line is there only if it was flushed before os._exit
    assert (done.returncode, done.stdout, done.stderr) == (0, f"wrote {tmp_path / 'console.pt'}\n", "")
    assert (tmp_path / "console.pt").read_bytes() == (tmp_path / "main.pt").read_bytes()
    (tmp_path / "bad.wcz").write_bytes(b"nonsense")
    done = python("-m", "weightcodec", "decode", tmp_path / "bad.wcz", "-o", tmp_path / "bad.pt")
    assert done.returncode == 1 and done.stderr.startswith("weightcodec: error: ") and not (tmp_path / "bad.pt").exists()
    assert python("-m", "weightcodec", "decode", wcz).returncode == 2  # no -o


def test_the_console_script_flushes_runs_the_exit_callbacks_and_keeps_the_code():
    script = """
import atexit, sys
from weightcodec import cli
def run(args):
    atexit.register(print, "exit callback ran", file=sys.stderr)
    print("printed without a flush")
    return 3
cli._run = run
sys.argv[1:] = ["inspect", "m.wcz"]
cli.console_main()
"""
    done = python("-c", script)
    assert (done.returncode, done.stdout, done.stderr) == (3, "printed without a flush\n", "exit callback ran\n")


def test_a_command_that_runs_user_code_exits_normally(tmp_path):
    """A training hook may leave a file open: only the interpreter's teardown flushes and closes it."""
    script = """
import sys
from weightcodec import cli
def run(args):
    global log  # reachable to the end, as a hook's module-level log file is
    log = open(args.output, "w")
    log.write("written by a hook")
    return 0
cli._run = run
sys.argv[1:] = ["compress", "model.pt", "--recipe", "r.toml", "-o", sys.argv[1]]
cli.console_main()
"""
    assert "compress" in cli.RUNS_USER_CODE
    assert python("-c", script, tmp_path / "log.txt").returncode == 0
    assert (tmp_path / "log.txt").read_text() == "written by a hook"


def test_importing_the_cli_and_parsing_a_decode_command_line_imports_neither_torch_nor_numba(run, weights, tmp_path):
    wcz = tmp_path / "m.wcz"
    assert run("encode", weights[0], "-o", wcz, "--codec", "deep", "-q")[0] == 0
    done = python("-c", SPY, "decode", wcz, "-o", tmp_path / "out.pt", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "torch or numba after parsing: False"
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True)["fc1.weight"], weightcodec.load(wcz)["fc1.weight"])


# ----------------------------------------------------------------------------- the README's tour


def tour_blocks() -> list[tuple[str, str]]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    tour = text.split("## A 5-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", tour, re.S)


REPOSITORY = Path(__file__).resolve().parent.parent
# what the tour reads from the root of a clone: the install line's files and the example
TOUR_INPUTS = ("examples", "constraints.txt", "pyproject.toml")


def check_install_line(words: list[str]) -> None:
    """What ``pip install -c FILE -e 'PATH[extras]'`` needs, checked in the working folder (a real install is minutes)."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    options = iter(words)
    for option in options:
        value = next(options, "")
        if option == "-c":
            assert Path(value).is_file(), f"pip install -c {value}: no such file in the tour's folder {Path.cwd()}"
        elif option == "-e":
            path, _, extras = value.partition("[")
            pyproject = Path(path) / "pyproject.toml"
            assert pyproject.is_file(), f"pip install -e {value}: no pyproject.toml in {Path(path).resolve()}"
            assert tomllib.loads(pyproject.read_text())["project"]["name"] == project["name"]
            unknown = set(filter(None, extras.rstrip("]").split(","))) - set(project["optional-dependencies"])
            assert not unknown, f"pip install -e {value}: no such extras {unknown}"
        else:
            pytest.fail(f"the tour test does not know pip install {option!r}")


def run_shell_line(line: str, monkeypatch) -> None:
    """Run one line of a bash block, step by step (``&&``); fail on a step it does not know."""
    for step in line.split("&&"):
        words = shlex.split(step)
        if words[:3] == ["python3", "-m", "venv"] or words[:1] == ["."]:
            continue  # the tests already run in the environment these make
        if words[:2] == ["pip", "install"]:
            check_install_line(words[2:])
        elif words[:2] == ["mkdir", "-p"]:
            Path(words[2]).mkdir(parents=True, exist_ok=True)
        elif words[0] == "cd":
            monkeypatch.chdir(words[1])
        elif words[0] == "weightcodec":
            assert main(words[1:] + ["--quiet"]) == 0, line
        else:
            pytest.fail(f"the tour test does not know how to run {step.strip()!r}; teach run_shell_line")


def test_readme_tour_runs_as_written(tmp_path, monkeypatch, capsys):
    clone = tmp_path / "clone"  # the tour runs from the root of a clone: a copy of what it uses
    clone.mkdir()
    for name in TOUR_INPUTS:
        if (REPOSITORY / name).is_dir():
            shutil.copytree(REPOSITORY / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPOSITORY / name, clone / name)
    monkeypatch.chdir(clone)
    namespace, inspected, shown = {}, None, None
    for language, code in tour_blocks():
        if language == "python":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.onnx.export(dynamo=False)
                exec(compile(code, "README.md", "exec"), namespace)
            claimed = re.search(r"# (\d+) bytes", code)
            if claimed:
                assert len(namespace["data"]) == int(claimed.group(1)), "README's byte count is stale"
        elif language == "toml":
            Path(code.splitlines()[0].lstrip("# ")).write_text(code)
        elif language == "bash":
            for line in code.strip().splitlines():
                capsys.readouterr()
                run_shell_line(line, monkeypatch)
                if line == "weightcodec inspect model.wcz":
                    inspected = capsys.readouterr().out
        elif language == "text":
            shown = [row for row in code.splitlines() if row != "..."]
    assert inspected is not None and shown
    assert all(row in inspected.splitlines() for row in shown), "README's inspect table is stale"
    for name in ("model.wcz", "model-cli.wcz", "model-recipe.wcz", "tiny.wcz", "model.png", "restored.safetensors",
                 "model-compressed.onnx"):
        assert (Path.cwd() / name).stat().st_size > 0


@pytest.mark.parametrize("line, message", [
    ("pip install -c constraints.txt -e '.[onnx]'", "pip install -c constraints.txt: no such file"),
    ("pip install -e '.[gpu]'", "no pyproject.toml"),
    ("make tour", "does not know how to run 'make tour'"),
])
def test_tour_runner_refuses_what_would_fail(tmp_path, monkeypatch, line, message):
    monkeypatch.chdir(tmp_path)  # a folder holding only a copy of examples/: the tour's old, broken premise
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.raises(pytest.fail.Exception if "make" in line else AssertionError, match=re.escape(message)):
        run_shell_line(line, monkeypatch)


def test_tour_runner_checks_the_extras(tmp_path, monkeypatch):
    shutil.copy(REPOSITORY / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.chdir(tmp_path)
    run_shell_line("pip install -e '.[onnx]'", monkeypatch)
    with pytest.raises(AssertionError, match="no such extras {'gpu'}"):
        run_shell_line("pip install -e '.[onnx,gpu]'", monkeypatch)
