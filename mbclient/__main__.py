"""``python -m mbclient``."""

from .cli import main

raise SystemExit(main())
