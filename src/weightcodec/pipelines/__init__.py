"""The papers' algorithms as sequences of steps: the only place where training meets encoding.

:mod:`.data` (MNIST), :mod:`.models` (the LeNets), :mod:`.training` (train / evaluate / retrain),
:mod:`.settings` (per-model settings, as data), :mod:`.steps` (prune, cluster, encode a layer,
freeze, retrain, read back), :mod:`.sweep` (the search over a filter's ``t``),
:mod:`.deep_compression` (Han et al. 2016), :mod:`.weightless` (Reagen et al. 2018) and
:mod:`.auto` (per-layer choices within an error target), which only order the steps,
:mod:`.report` and :mod:`.plots` (results pages and figures) and :mod:`.reproduce`
(``weightcodec reproduce``).
"""

__all__ = [
    "data",
    "models",
    "training",
    "settings",
    "steps",
    "sweep",
    "deep_compression",
    "weightless",
    "auto",
    "report",
    "reproduce",
]
