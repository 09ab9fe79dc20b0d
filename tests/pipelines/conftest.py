"""Fixtures shared by the pipeline tests."""

import pytest

from weightcodec.errors import DataError
from weightcodec.pipelines.data import Mnist, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    """Real MNIST (the verified wheel copy), or a skip where it cannot be obtained."""
    try:
        return load_mnist()
    except DataError as exc:
        pytest.skip(f"MNIST cannot be obtained on this machine: {exc}")
