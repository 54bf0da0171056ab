"""The saved device list, ``/Settings/ModbusClient/<port>/Devices``, as the GUI edits it.

The GUI's "Add device" page appends ``proto:ip:port:unit`` exactly as typed, after a comma,
without de-duplication; "Remove" deletes the entry whose string matches exactly. So the
list may hold ``tcp:192.168.1.5:0502:01``, the same device twice, or junk. The runtime
reacts to every change at once (devices start and stop); then the list is written back
in canonical form, as the stock client does: each entry normalised
(``tcp:192.168.1.5:502:1``), one entry per unit (an entry naming the model wins),
sorted as strings, malformed entries dropped (each with one log line when it is parsed).
Entries whose device does not answer are kept - serial ones too: a PV inverter asleep
at night is still configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..spec import DeviceSpec


def canonical_text(specs: Iterable[DeviceSpec]) -> str:
    from ..runtime.supervisor import merge_specs

    return ",".join(sorted(str(s) for s in merge_specs(list(specs)).values()))


def canonical(value: Any) -> tuple[str, list[DeviceSpec], list[str]]:
    """(canonical text, specs, problems) of a stored value (junk tolerated)."""
    from ..runtime.supervisor import parse_device_list

    specs, problems = parse_device_list(value)
    return canonical_text(specs), specs, problems


def with_added(value: Any, new: Iterable[DeviceSpec]) -> str:
    """The canonical list with ``new`` specs added (a unit already listed keeps its entry)."""
    _text, specs, _problems = canonical(value)
    from ..runtime.supervisor import unit_key

    have = {unit_key(s) for s in specs}
    return canonical_text(specs + [s for s in new if unit_key(s) not in have])
