import warnings

import numpy as np
import pytest
import torch
from torch import nn

import weightcodec
from weightcodec import container
from weightcodec.errors import WeightcodecError
from weightcodec.onnx_export import export_onnx

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def export(model: nn.Module, path, example) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
        torch.onnx.export(model.eval(), (example,), path, dynamo=False, do_constant_folding=False,
                          input_names=["x"], output_names=["y"])


def densified(model):
    """The model with every sparse initializer turned dense (ONNX's reference runtime needs that)."""
    for sparse in list(model.graph.sparse_initializer):
        values, indices = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
        dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
        dense[indices] = values
        model.graph.initializer.append(numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
    del model.graph.sparse_initializer[:]
    return model


@pytest.fixture
def compressed(tmp_path):
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():  # non-trivial batch norm: running statistics, affine parameters
        model(torch.randn(16, 1, 8, 8))
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(1, 1, 8, 8)
    export(model, tmp_path / "model.onnx", x)
    recipe = {"rule": [{"match": "fc.weight", "method": "deep", "sparsity": 0.9, "clusters": 8},
                       {"match": "conv.weight", "method": "deep", "clusters": 16}]}
    weightcodec.compress(model, recipe, tmp_path / "model.wcz")
    return model, tmp_path


def test_onnx_graph_runs_with_the_decoded_weights(compressed):
    model, folder = compressed
    left_out = export_onnx(container.read(folder / "model.wcz"), folder / "model.onnx", folder / "out.onnx")
    assert left_out == ["bn.num_batches_tracked"]  # a training counter: exporters drop it
    result = onnx.load(folder / "out.onnx")
    onnx.checker.check_model(result)
    assert [s.values.name for s in result.graph.sparse_initializer] == ["fc.weight"]  # 10 % dense: sparse is smaller
    assert "conv.weight" in {i.name for i in result.graph.initializer}  # 72 dense values: dense is smaller
    x = torch.randn(3, 1, 8, 8)
    (y,) = ReferenceEvaluator(densified(result)).run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_sparse_initializer_holds_exactly_the_non_zeros(compressed):
    model, folder = compressed
    export_onnx(container.read(folder / "model.wcz"), folder / "model.onnx", folder / "out.onnx")
    (sparse,) = onnx.load(folder / "out.onnx").graph.sparse_initializer
    weight = model.fc.weight.detach().flatten()
    assert list(sparse.dims) == [5, 288]
    np.testing.assert_array_equal(numpy_helper.to_array(sparse.indices), torch.nonzero(weight).flatten().numpy())
    np.testing.assert_array_equal(numpy_helper.to_array(sparse.values), weight[weight != 0].numpy())


def test_float16_initializers_keep_their_type(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    export(model, tmp_path / "m.onnx", torch.randn(1, 6))
    proto = onnx.load(tmp_path / "m.onnx")
    for init in proto.graph.initializer:  # make the graph's weights float16, as a half-precision export would
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    onnx.save(proto, tmp_path / "half.onnx")
    weightcodec.compress(model, {"rule": [{"match": "*", "method": "deep", "clusters": 4}]}, tmp_path / "m.wcz")
    export_onnx(container.read(tmp_path / "m.wcz"), tmp_path / "half.onnx", tmp_path / "out.onnx")
    weight = {i.name: i for i in onnx.load(tmp_path / "out.onnx").graph.initializer}["weight"]
    assert weight.data_type == onnx.TensorProto.FLOAT16
    np.testing.assert_array_equal(numpy_helper.to_array(weight), model.weight.detach().numpy().astype(np.float16))


def test_missing_initializer_for_a_compressed_tensor(compressed):
    _, folder = compressed
    other = nn.Sequential(nn.Linear(4, 2))
    export(other, folder / "other.onnx", torch.randn(1, 4))
    with pytest.raises(WeightcodecError, match=r"no initializer named \['conv.weight', 'fc.weight'\]"):
        export_onnx(container.read(folder / "model.wcz"), folder / "other.onnx", folder / "out.onnx")
    assert not (folder / "out.onnx").exists()


def test_shape_mismatch_and_unreadable_model(compressed):
    _, folder = compressed
    proto = onnx.load(folder / "model.onnx")
    for init in proto.graph.initializer:
        if init.name == "fc.weight":
            init.CopyFrom(numpy_helper.from_array(np.zeros((5, 10), np.float32), "fc.weight"))
    onnx.save(proto, folder / "wrong.onnx")
    with pytest.raises(WeightcodecError, match=r"initializer 'fc.weight' has shape \[5, 10\], the file's tensor \[5, 288\]"):
        export_onnx(container.read(folder / "model.wcz"), folder / "wrong.onnx", folder / "out.onnx")
    (folder / "junk.onnx").write_bytes(b"\xff\x00 not protobuf")
    with pytest.raises(WeightcodecError, match="not a readable ONNX model"):
        export_onnx(container.read(folder / "model.wcz"), folder / "junk.onnx", folder / "out.onnx")
    with pytest.raises(WeightcodecError, match="no such file"):
        export_onnx(container.read(folder / "model.wcz"), folder / "missing.onnx", folder / "out.onnx")
    assert not (folder / "out.onnx").exists()
