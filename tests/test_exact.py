import torch

import weightcodec
from weightcodec import container


def test_each_tensor_gets_its_smallest_exact_codec(tmp_path):
    g = torch.Generator().manual_seed(0)
    on_grid = torch.round(torch.randn(64, 64, generator=g) * 20) * 2.0**-7  # NNCodec-like: levels times a step
    few_values = torch.tensor([-0.3, 0.1, 0.7])[torch.randint(0, 3, (64, 64), generator=g)]
    few_values[:, :32] = 0
    sd = {
        "grid.weight": on_grid,
        "codebook.weight": few_values,
        "free.weight": torch.randn(16, 16, generator=g),
        "half.weight": (torch.round(torch.randn(32, 32, generator=g) * 8) / 16).half(),
        "ids": torch.arange(10),
    }
    report = weightcodec.encode_exact(sd, tmp_path / "m.wcz")
    back = weightcodec.load(tmp_path / "m.wcz")
    for name, tensor in sd.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    codecs = {name: entry["codec"] for name, entry in report["tensors"].items()}
    assert codecs["grid.weight"] == "uniform" and codecs["half.weight"] == "uniform"
    assert codecs["free.weight"] == "raw" and codecs["ids"] == "raw"
    assert codecs["codebook.weight"] in ("deep", "uniform")
    wcz = container.read(tmp_path / "m.wcz")
    assert report["file_bytes"] == wcz.file_bytes
    assert wcz.record("grid.weight").nbytes < 64 * 64 * 4 / 3
