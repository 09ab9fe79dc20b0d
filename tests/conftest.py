"""Fixtures shared by every test."""

import importlib.util
import os

import pytest


@pytest.fixture
def transformers():
    """The transformers package; where it is not installed, a skip, or under ``CI=true`` a failure."""
    if importlib.util.find_spec("transformers") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("transformers is not installed; CI installs it with the [test] extra")
        pytest.skip("transformers is not installed (pip install 'weightcodec[test]')")
    import transformers

    return transformers
