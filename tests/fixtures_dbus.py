"""Fixtures for a private dbus-daemon (owned by the D-Bus room)."""
