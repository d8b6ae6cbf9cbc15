"""``python -m edge`` is the ``facegate`` command."""

from edge.cli import main

raise SystemExit(main())
