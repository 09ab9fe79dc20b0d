import math

import numpy as np
import pytest
import torch

import weightcodec
from weightcodec import allocate, container
from weightcodec.cli import main
from weightcodec.errors import EncodeError


def small_model(seed=0):
    """A small transformer-like state_dict: matrices of different spreads, biases, norms, an int buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(300, 32, generator=g) * 0.05,
        "layer.query.weight": torch.randn(32, 32, generator=g) * 0.1,
        "layer.dense.weight": torch.randn(64, 32, generator=g) * 0.03,
        "layer.dense.bias": torch.randn(64, generator=g) * 0.01,
        "norm.weight": 1 + 0.1 * torch.randn(32, generator=g),
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g) * 0.2,
        "half.weight": (torch.randn(16, 16, generator=g) * 0.1).half(),
        "position_ids": torch.arange(40).reshape(1, 40),
        "zeros.weight": torch.zeros(10, 10),
    }


def float32_bytes(sd):
    return sum(t.numel() * t.element_size() for t in sd.values())


@pytest.mark.parametrize("ratio", [3.0, 6.0, 12.0])
def test_file_fits_the_budget_and_decodes(tmp_path, ratio):
    sd = small_model()
    path = tmp_path / "m.wcz"
    report = weightcodec.encode_to_size(sd, path, ratio=ratio)
    budget = int(float32_bytes(sd) / ratio)
    assert report["budget"] == budget
    assert report["file_bytes"] == path.stat().st_size <= budget
    assert report["file_bytes"] > 0.9 * budget  # the budget is used, not wasted
    back = weightcodec.load(path)
    assert list(back) == list(sd)
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
    assert torch.equal(back["position_ids"], sd["position_ids"])  # integer buffers stored exactly
    # the report's distortion is the real one
    measured = sum(
        float(((back[k].double() - sd[k].double()) ** 2).sum()) for k in sd if sd[k].is_floating_point()
    )
    assert report["distortion"] == pytest.approx(measured, rel=1e-6, abs=1e-12)
    for name, entry in report["tensors"].items():
        assert set(entry) >= {"codec", "step", "bytes", "mse"}
        assert entry["bytes"] == container.read(path).record(name).nbytes


def test_more_bytes_give_less_error(tmp_path):
    sd = small_model()
    errors = [
        weightcodec.encode_to_size(sd, tmp_path / f"{r}.wcz", ratio=r)["relative_error"] for r in (12.0, 6.0, 3.0)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_uniform_step_is_shared_by_the_big_matrices(tmp_path):
    sd = small_model()
    report = weightcodec.encode_to_size(sd, tmp_path / "m.wcz", ratio=6.0)
    chosen = report["tensors"]
    assert chosen["embed.weight"]["codec"] == "uniform"
    # equal slope, equal step: up to the greedy upgrades that spend what the Lagrangian choice leaves
    steps = [chosen[name]["step"] for name in ("layer.query.weight", "layer.dense.weight", "conv.weight")]
    assert max(steps) / min(steps) <= 2 ** (2 / allocate.STEP_GRID_PER_OCTAVE) + 1e-9
    assert chosen["position_ids"]["codec"] == "raw" and chosen["position_ids"]["mse"] == 0.0


def test_same_input_same_bytes(tmp_path):
    a, b = tmp_path / "a.wcz", tmp_path / "b.wcz"
    weightcodec.encode_to_size(small_model(), a, size=6000)
    weightcodec.encode_to_size(small_model(), b, size=6000)
    assert a.read_bytes() == b.read_bytes()


def test_state_dict_is_not_modified(tmp_path):
    sd = small_model()
    before = {k: v.clone() for k, v in sd.items()}
    weightcodec.encode_to_size(sd, tmp_path / "m.wcz", ratio=8.0)
    assert all(torch.equal(sd[k], before[k]) for k in sd)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of size"),
        ({"size": 100, "ratio": 2.0}, "exactly one of size"),
        ({"size": -5}, "positive int"),
        ({"ratio": 0.0}, "positive number"),
        ({"size": 200}, "cannot fit the state_dict in 200 bytes; the smallest file"),
        ({"size": 10**6, "calibration": [1]}, "calibration must map tensor names"),
        ({"size": 10**6, "calibration": {"nope.weight": np.ones((1, 3))}}, "'nope.weight' is not a float tensor"),
        ({"size": 10**6, "calibration": {"layer.query.weight": np.ones((3, 3))}}, r"expected \(1, 32\)"),
    ],
)
def test_errors(tmp_path, kwargs, message):
    with pytest.raises(EncodeError, match=message):
        weightcodec.encode_to_size(small_model(), tmp_path / "m.wcz", **kwargs)
    assert not (tmp_path / "m.wcz").exists()


def test_non_finite_weights_are_refused(tmp_path):
    sd = small_model()
    sd["layer.query.weight"][0, 0] = math.nan
    with pytest.raises(EncodeError, match="layer.query.weight holds NaN"):
        weightcodec.encode_to_size(sd, tmp_path / "m.wcz", ratio=4.0)


@pytest.mark.parametrize(
    "text, expected", [("10485760", 10485760), ("10M", 10**7), ("10MB", 10**7), ("10mib", 10 * 2**20), ("2.5KB", 2500)]
)
def test_parse_size(text, expected):
    assert allocate.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10XB", "-3MB", "0", "nan"])
def test_parse_size_errors(text):
    with pytest.raises(EncodeError, match="size"):
        allocate.parse_size(text)


def test_cli_size_and_ratio(tmp_path, capsys):
    from safetensors.torch import save_file

    source = tmp_path / "m.safetensors"
    save_file(small_model(), source)
    assert main(["encode", str(source), "-o", str(tmp_path / "a.wcz"), "--size", "6KB", "-q"]) == 0
    assert (tmp_path / "a.wcz").stat().st_size <= 6000
    assert "budget 6000" in capsys.readouterr().out
    assert main(["encode", str(source), "-o", str(tmp_path / "b.wcz"), "--ratio", "5", "-q"]) == 0
    assert main(["encode", str(source), "-o", str(tmp_path / "c.wcz"), "--size", "6KB", "--clusters", "4"]) == 1
    assert "drop --clusters" in capsys.readouterr().err
    assert main(["encode", str(source), "-o", str(tmp_path / "c.wcz"), "--size", "6KB", "--ratio", "3"]) == 1
    assert main(["encode", str(source), "-o", str(tmp_path / "c.wcz"), "--size", "6XB"]) == 2


def test_estimate_grid_matches_the_real_quantizer():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 5000)
    steps = np.array([0.05, 0.3, 2.0])
    bits, errors = weightcodec.codecs.uniform.estimate_grid(values, steps)
    for step, b, e in zip(steps, bits, errors):
        levels = weightcodec.codecs.uniform.quantize_levels(values, np.array([step]))
        assert e == pytest.approx(((values - levels.reshape(-1) * step) ** 2).sum())
        _, counts = np.unique(levels, return_counts=True)
        assert b == pytest.approx(-(counts * np.log2(counts / values.size)).sum())


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(400, 32)
        self.fc = torch.nn.Linear(32, 64)
        self.out = torch.nn.Linear(64, 8)

    def forward(self, tokens):
        return self.out(torch.relu(self.fc(self.embed(tokens))))


def test_calibration_statistics_shapes_and_values():
    torch.manual_seed(0)
    model = TinyLM()
    batches = [torch.randint(0, 10, (4, 7)) for _ in range(3)]  # only tokens 0..9 are seen
    stats = weightcodec.calibration_statistics(model, batches)
    assert stats["embed.weight"].shape == (400, 1) and stats["fc.weight"].shape == (1, 32)
    assert stats["out.weight"].shape == (1, 64)
    assert stats["embed.weight"].sum() == pytest.approx(1.0) and not stats["embed.weight"][10:].any()
    x = model.embed(torch.cat(batches).reshape(-1)).detach().double()
    np.testing.assert_allclose(stats["fc.weight"].ravel(), (x * x).mean(0).numpy(), rtol=1e-6)
    with pytest.raises(EncodeError, match="empty"):
        weightcodec.calibration_statistics(model, [])


def test_calibration_batches_may_be_any_mapping():
    from collections import UserDict  # what a tokenizer returns (BatchEncoding) is a mapping, not a dict

    torch.manual_seed(0)
    model = TinyLM()
    batches = [torch.randint(0, 10, (4, 7)) for _ in range(3)]
    as_dicts = weightcodec.calibration_statistics(model, [{"tokens": b} for b in batches])
    as_mappings = weightcodec.calibration_statistics(model, [UserDict(tokens=b) for b in batches])
    assert all(np.array_equal(as_dicts[n], as_mappings[n]) for n in as_dicts) and len(as_dicts) == 3


def test_calibrated_allocation_lowers_the_weighted_error(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batches = [torch.randint(0, 10, (8, 16)) for _ in range(4)]
    stats = weightcodec.calibration_statistics(model, batches)

    def output_error(path):
        restored = TinyLM()
        restored.load_state_dict(weightcodec.load(path))
        tokens = torch.cat(batches)
        with torch.no_grad():
            return float(((restored(tokens) - model(tokens)) ** 2).mean())

    plain = weightcodec.encode_to_size(sd, tmp_path / "plain.wcz", ratio=8.0)
    calibrated = weightcodec.encode_to_size(sd, tmp_path / "calibrated.wcz", ratio=8.0, calibration=stats)
    assert calibrated["file_bytes"] <= calibrated["budget"] == plain["budget"]
    assert weightcodec.container.read(tmp_path / "calibrated.wcz").record("embed.weight").encoded.meta["scale"] == "row"
    assert output_error(tmp_path / "calibrated.wcz") < output_error(tmp_path / "plain.wcz")


def test_dtypes_scalars_and_empty_tensors_come_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "a.weight": (torch.randn(64, 64, generator=g) * 0.1).bfloat16(),
        "b.weight": torch.randn(64, 32, generator=g).double(),
        "n.weight": torch.ones(64).bfloat16(),
        "scalar": torch.tensor(3.0),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False, True]),
    }
    report = weightcodec.encode_to_size(sd, tmp_path / "m.wcz", ratio=3.0)
    back = weightcodec.load(tmp_path / "m.wcz")
    assert report["file_bytes"] <= report["budget"]
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
    assert torch.equal(back["mask"], sd["mask"]) and float(back["scalar"]) == 3.0
    measured = float(((back["a.weight"].double() - sd["a.weight"].double()) ** 2).mean())
    assert report["tensors"]["a.weight"]["mse"] == pytest.approx(measured)


def test_full_calibration_compensates_and_fits(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batches = [torch.randint(0, 10, (8, 16)) for _ in range(4)]
    stats = weightcodec.calibration_statistics(model, batches, full=True)
    assert stats["fc.weight"].shape == (32, 32) and stats["embed.weight"].shape == (400, 1)
    report = weightcodec.encode_to_size(sd, tmp_path / "m.wcz", ratio=8.0, calibration=stats)
    assert report["file_bytes"] <= report["budget"]
    back = weightcodec.load(tmp_path / "m.wcz")
    measured = float(((back["fc.weight"].double() - sd["fc.weight"].double()) ** 2).mean())
    assert report["tensors"]["fc.weight"]["mse"] == pytest.approx(measured)


def test_cli_calibrate_matches_the_api_and_reports_bad_files(tmp_path, capsys):
    torch.manual_seed(0)
    model = TinyLM()
    source = tmp_path / "m.pt"
    torch.save(model.state_dict(), source)
    stats = weightcodec.calibration_statistics(model, [torch.randint(0, 10, (8, 16)) for _ in range(4)], full=True)
    calibration = tmp_path / "calibration.safetensors"
    weightcodec.save_calibration(stats, calibration)
    loaded = weightcodec.load_calibration(calibration)
    assert sorted(loaded) == sorted(stats) and all(np.array_equal(loaded[n], stats[n]) for n in stats)

    cli_file, api_file = tmp_path / "cli.wcz", tmp_path / "api.wcz"
    assert main(["encode", str(source), "-o", str(cli_file), "--ratio", "8", "--calibrate", str(calibration), "-q"]) == 0
    weightcodec.encode_to_size(model.state_dict(), api_file, ratio=8.0, calibration=stats)
    assert cli_file.read_bytes() == api_file.read_bytes()
    assert main(["encode", str(source), "-o", str(tmp_path / "plain.wcz"), "--ratio", "8", "-q"]) == 0
    assert (tmp_path / "plain.wcz").read_bytes() != cli_file.read_bytes()  # the statistics changed the choice
    capsys.readouterr()

    def error(*extra):
        assert main(["encode", str(source), "-o", str(tmp_path / "x.wcz"), *extra, "-q"]) == 1
        assert not (tmp_path / "x.wcz").exists()
        return capsys.readouterr().err

    assert "give it with --size BYTES or --ratio R" in error("--codec", "deep", "--calibrate", str(calibration))
    assert "no such file" in error("--ratio", "8", "--calibrate", str(tmp_path / "missing.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "calibration file" in error("--ratio", "8", "--calibrate", str(tmp_path / "junk.safetensors"))
    weightcodec.save_calibration({"nope.weight": np.ones((1, 32))}, tmp_path / "names.safetensors")
    assert "'nope.weight' is not a float tensor" in error("--ratio", "8", "--calibrate", str(tmp_path / "names.safetensors"))
    weightcodec.save_calibration({"fc.weight": -np.ones((1, 32))}, tmp_path / "negative.safetensors")
    assert "must be finite, non-negative" in error("--ratio", "8", "--calibrate", str(tmp_path / "negative.safetensors"))
    with pytest.raises(EncodeError, match="as .safetensors"):
        weightcodec.save_calibration(stats, tmp_path / "calibration.npz")
