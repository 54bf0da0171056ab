"""``python -m mbclient``."""

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while still importing: a stop like any other, no traceback
    code = 0
raise SystemExit(code)
