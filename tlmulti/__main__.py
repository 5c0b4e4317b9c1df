"""``python -m tlmulti ...``: the same as the ``tlmulti`` command."""

from tlmulti.cli import main

main()
