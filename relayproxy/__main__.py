"""`python -m relayproxy` runs the CLI."""

from relayproxy.cli import main

raise SystemExit(main())
