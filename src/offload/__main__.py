"""``python -m offload``: the same as the ``offload`` command."""

from .cli import main

main()
