"""Shared fixtures live in fixtures_*.py beside this file (one per room)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

pytest_plugins = ["fixtures_dbus", "fixtures_sim"]
