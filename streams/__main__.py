"""``python -m streams`` runs the ``inboxflow`` command."""

from streams.cli import main

main()
