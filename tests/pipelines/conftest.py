"""Fixtures shared by the pipeline tests."""

import os

import pytest

from weightcodec.errors import DataError
from weightcodec.pipelines.data import Mnist, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    """Real MNIST (the verified wheel copy); where it cannot be obtained, a skip, or under ``CI=true`` a failure.

    In CI a green run must mean the real-data tests ran, so a missing data set fails them.
    """
    try:
        return load_mnist()
    except DataError as exc:
        reason = f"MNIST cannot be obtained on this machine: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the real-data tests must run in CI)", pytrace=False)
        pytest.skip(reason)
