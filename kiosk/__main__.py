"""``python -m kiosk`` is the ``locker`` command."""

from kiosk.cli import main

main()
