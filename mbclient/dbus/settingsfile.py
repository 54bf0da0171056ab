"""The embedded settings store's file: JSON, replaced atomically, never half-written.

Why this shape: the file holds user choices (device instances, roles, names, positions)
that must survive a power cut or ``kill -9`` at any moment. Each save writes the whole
state to a temporary file in the same directory, fsyncs it, renames it over the old
file (atomic on POSIX) and fsyncs the directory, so the file on disk is always either
the previous complete state or the new one. Saves are small (a few KB) and coalesced by
the caller, so they run synchronously on the event loop instead of in a thread.

A file that cannot be read back (truncated by a foreign tool, edited by hand into
invalid JSON, wrong structure) is renamed aside with a one-line warning and the service
starts empty rather than refusing to run: a GX must come up even with a broken file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "mbclient-settings"
VERSION = 1
TYPES = {"i": int, "f": float, "s": str}


def default_settings_path() -> Path:
    """``$XDG_CONFIG_HOME/mbclient/settings.json``, else ``~/.config/mbclient/settings.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mbclient" / "settings.json"


class CorruptSettings(ValueError):
    pass


def _check_record(path: str, rec: Any) -> dict[str, Any]:
    if not isinstance(path, str) or not path.startswith("/Settings/"):
        raise CorruptSettings(f"bad setting path {path!r}")
    if not isinstance(rec, dict) or rec.get("type") not in TYPES:
        raise CorruptSettings(f"bad record for {path}")
    kind = TYPES[rec["type"]]
    for key in ("value", "default", "min", "max"):
        v = rec.get(key)
        if v is None and key != "value":
            continue
        ok = isinstance(v, str) if kind is str else isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise CorruptSettings(f"bad {key} for {path}")
    out = {k: rec.get(k) for k in ("type", "value", "default", "min", "max")}
    if kind is int:
        out = {k: (int(v) if isinstance(v, (int, float)) else v) for k, v in out.items()}
    elif kind is float:
        out = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in out.items()}
    out["silent"] = bool(rec.get("silent", False))
    return out


class SettingsFile:
    """Load and atomically save ``{path: {type, value, default, min, max, silent}}``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _temp_prefix(self) -> str:
        return f".{self.path.name}."

    def load(self) -> dict[str, dict[str, Any]]:
        """Read the settings; a missing file is empty, a corrupt one is kept aside."""
        self._remove_stale_temps()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("settings"), dict):
                raise CorruptSettings("not an mbclient settings file")
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and CorruptSettings are ValueErrors
            aside = self._aside(copy=False)
            log.warning("settings file %s is unreadable (%s); kept as %s, starting empty", self.path, exc, aside.name)
            return {}
        # One bad record (a hand edit, a foreign tool) costs that record only: the others
        # (device instances, the zero-export configuration) must survive it.
        good: dict[str, dict[str, Any]] = {}
        bad: list[str] = []
        for p, r in doc["settings"].items():
            try:
                good[p] = _check_record(p, r)
            except CorruptSettings as exc:
                bad.append(str(exc))
        if bad:
            aside = self._aside(copy=True, raw=raw)
            log.warning("settings file %s: dropped %d bad record(s) (%s%s); the original is kept as %s",
                        self.path, len(bad), "; ".join(bad[:3]), ", ..." if len(bad) > 3 else "", aside.name)
        return good

    def _aside(self, *, copy: bool, raw: bytes = b"") -> Path:
        """Keep the file as it was next to it (renamed, or copied when it stays in use)."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        if copy:
            with contextlib.suppress(OSError):
                aside.write_bytes(raw)
        else:
            os.replace(self.path, aside)
        return aside

    def check_writable(self) -> None:
        """ConfigError now, rather than a failed save on the first change much later."""
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=self._temp_prefix(), suffix=".tmp", dir=directory)
        except OSError as exc:
            raise ConfigError(f"settings location {directory} is not writable: {exc.strerror}") from None
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def save(self, settings: dict[str, dict[str, Any]]) -> None:
        """Write all settings atomically (temp file, fsync, rename, fsync the directory)."""
        data = json.dumps(
            {"format": FORMAT, "version": VERSION, "settings": settings}, indent=1, sort_keys=True
        ).encode()
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self._temp_prefix(), suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _remove_stale_temps(self) -> None:
        """Temp files left by a kill during a save hold nothing the real file lacks."""
        directory = self.path.parent
        if not directory.is_dir():
            return
        for leftover in directory.glob(f"{self._temp_prefix()}*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()

