"""The papers' algorithms as sequences of steps: the only place where training meets encoding.

:mod:`.data` (MNIST), :mod:`.models` (the LeNets), :mod:`.training` (train / evaluate / retrain),
:mod:`.deep_compression` (Han et al. 2016) and :mod:`.reproduce` (``weightcodec reproduce``).
"""

__all__ = ["data", "models", "training", "deep_compression", "reproduce"]
