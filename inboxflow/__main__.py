"""``python -m inboxflow`` runs the ``inboxflow`` command."""

from inboxflow.cli import main

main()
