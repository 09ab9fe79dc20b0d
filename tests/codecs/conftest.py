"""Helpers shared by the codec tests, handed out as fixtures.

pytest runs with ``--import-mode=importlib`` (``tests/codecs`` must not shadow the standard
library's ``codecs``), so test modules cannot import a sibling helper module; a fixture that
returns the helper function is the shared place instead.
"""

import numpy as np
import pytest


def _random_keys_values(n, clusters, rng, universe=2**40):
    """``n`` distinct random keys below ``universe``, unsorted, and a code below ``clusters`` for each."""
    keys = np.unique(rng.integers(0, universe, size=n + n // 8 + 8))
    keys = rng.permutation(keys)[:n]  # unsorted on purpose: a build must not rely on order
    return keys, rng.integers(0, clusters, size=keys.size)


def _sparse_layer(shape, density, clusters, seed):
    """A pruned, clustered float32 layer: each weight non-zero with probability ``density``,
    its value one of ``clusters`` centroids evenly spaced on [-1, 1]. Returns ``(array, mask)``."""
    rng = np.random.default_rng(seed)
    codebook = np.linspace(-1, 1, clusters, dtype=np.float32)
    array = np.zeros(shape, np.float32)
    mask = rng.random(shape) < density
    array[mask] = codebook[rng.integers(0, clusters, int(mask.sum()))]
    return array, mask


def _read_in_chunks(reader, total, chunks):
    """Read ``total`` symbols from a streaming ``reader`` in pieces of the sizes ``chunks`` (cycled), then close it."""
    pieces, left = [], total
    for n in chunks * (total // sum(chunks) + 1):
        pieces.append(reader.read(min(n, left)))
        left -= pieces[-1].size
        if not left:
            break
    reader.close()
    return np.concatenate(pieces)


@pytest.fixture(scope="session")
def read_in_chunks():
    """``read_in_chunks(reader, total, chunks) -> symbols``: an entropy decoder's reader driven piece by piece."""
    return _read_in_chunks


@pytest.fixture(scope="session")
def random_keys_values():
    """``random_keys_values(n, clusters, rng, universe=2**40) -> (keys, values)`` for retrieval builds."""
    return _random_keys_values


@pytest.fixture(scope="session")
def sparse_layer():
    """``sparse_layer(shape, density, clusters, seed) -> (array, mask)`` for codec round trips."""
    return _sparse_layer
