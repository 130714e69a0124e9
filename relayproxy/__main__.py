"""`python -m relayproxy` runs the CLI."""

from .cli import main

raise SystemExit(main())
