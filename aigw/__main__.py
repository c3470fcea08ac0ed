"""``python -m aigw`` runs the command line."""

from aigw.cli import main

raise SystemExit(main())
