"""``python -m broker`` runs the ``cloudbroker`` command."""

from broker.cli import main

main()
