"""``python -m hemeplm.cli``: the ``hemeplm`` command."""

from hemeplm.cli import main

main()
