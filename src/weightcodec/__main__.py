"""``python -m weightcodec``: the command line, also as ``torchrun -m weightcodec ...``."""

from .cli import console_main

console_main()
