"""The README's device table names every model mbclient ships, with its transport."""

from __future__ import annotations

import re
from pathlib import Path

from mbclient.devices import all_models

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_built_in_model_is_in_the_readme_device_table() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Devices"):]
    section = section[:section.index("\n## ", 4)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
    built_in = {m.name for m in all_models() if not m.source or m.source.endswith("(built in)")}
    assert built_in - named == set(), "models missing from README's device table"
    for row in rows:
        transport = row.split("|")[3]
        assert re.search(r"RS-485|TCP|UDP", transport), row
