"""Torch-side simplification before encoding: pruning (:mod:`.prune`) and weight sharing (:mod:`.cluster`)."""

from . import cluster, prune

__all__ = ["cluster", "prune"]
