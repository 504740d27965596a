"""``python -m edgegen`` runs the CLI."""

from edgegen.cli import main

main()
