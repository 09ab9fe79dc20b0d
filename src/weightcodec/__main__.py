"""``python -m weightcodec``: the command line, also as ``torchrun -m weightcodec ...``."""

from .cli import main

raise SystemExit(main())
