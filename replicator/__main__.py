"""``python -m replicator``."""

from replicator.cli.main import main

raise SystemExit(main())
