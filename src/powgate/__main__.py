"""``python -m powgate``: the same as the ``powgate`` command."""

from powgate.cli import main

raise SystemExit(main())
