"""A tree of ``com.victronenergy.BusItem`` objects served from ONE raw message handler.

Why not one dbus-fast ``ServiceInterface`` per path: a GX service has hundreds of paths
(localsettings thousands); one Python object plus export bookkeeping per path costs
memory and start-up time for nothing, and a path added or removed at run time would need
export/unexport calls. A single handler registered with ``bus.add_message_handler`` looks
the path up in a dict instead, answers calls that carry no interface header (velib's
``VeDbusItemImport`` sends those) by member name alone, and serves intermediate nodes
(``/Ac`` -> its subtree) without exporting anything for them.

Subclasses provide the leaves and three method tables (leaf, node, root); this module
does the matching, signature checks, replies, errors and introspection. Calls it does not
recognise (other interfaces, paths it does not own) fall through to dbus-fast, so extra
``ServiceInterface`` objects (VregLink) exported on the same connection keep working.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast import introspection as intr
from dbus_fast.constants import ArgDirection, ErrorType
from dbus_fast.errors import DBusError
from dbus_fast.signature import get_signature_tree

log = logging.getLogger(__name__)

BUSITEM = "com.victronenergy.BusItem"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"

Kind = Literal["leaf", "node", "root"]


@dataclass(frozen=True)
class Method:
    """One callable member: ``fn(path, *args)`` returns the reply body.

    A single out type means ``fn`` returns that one value; several out types
    (``'vvvi'``) mean it returns a tuple; no out type means it returns nothing.
    """

    interface: str
    name: str
    in_sig: str
    out_sig: str
    fn: Callable[..., Any]
    arg_names: tuple[str, ...] = ()
    n_out: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_out", len(get_signature_tree(self.out_sig).types))

    def body(self, result: Any) -> list[Any]:
        if self.n_out == 0:
            return []
        if self.n_out == 1:
            return [result]
        return list(result)

    def introspect(self) -> intr.Method:
        in_types = get_signature_tree(self.in_sig).types
        names = self.arg_names or tuple(f"arg{i}" for i in range(len(in_types)))
        in_args = [intr.Arg(t.signature, ArgDirection.IN, n) for t, n in zip(in_types, names, strict=False)]
        out_args = [intr.Arg(t.signature, ArgDirection.OUT) for t in get_signature_tree(self.out_sig).types]
        return intr.Method(self.name, in_args, out_args)


def method_table(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


class BusItemTree:
    """Base class: dispatch method calls on a path tree. Use the instance as the handler.

    Subclasses implement :meth:`leaf_paths`, fill ``leaf_methods``, ``node_methods``,
    ``root_methods`` (member -> :class:`Method`) and ``signals`` (kind -> introspection
    signals), and call :meth:`structure_changed` when leaves come or go.
    """

    leaf_methods: dict[str, Method]
    node_methods: dict[str, Method]
    root_methods: dict[str, Method]
    signals: dict[Kind, list[intr.Signal]] = {}

    def __init__(self) -> None:
        self._nodes: set[str] | None = None
        self._children: dict[str, set[str]] | None = None

    # -- to be provided by subclasses -----------------------------------------------------------
    def leaf_paths(self) -> Collection[str]:
        raise NotImplementedError

    def fixed_nodes(self) -> Collection[str]:
        """Nodes that exist even without leaves below them (besides '/')."""
        return ()

    def foreign_paths(self) -> Collection[str]:
        """Paths served by other handlers on the same connection (listed as children)."""
        return ()

    def foreign_interfaces(self, path: str) -> list[intr.Interface]:
        return []

    # -- structure ---------------------------------------------------------------------------------
    def structure_changed(self) -> None:
        self._nodes = None
        self._children = None

    def _build(self) -> None:
        nodes: set[str] = {"/"}
        children: dict[str, set[str]] = {}
        for path in (*self.leaf_paths(), *self.fixed_nodes(), *self.foreign_paths()):
            parts = path.strip("/").split("/")
            parent = "/"
            for depth, part in enumerate(parts):
                children.setdefault(parent, set()).add(part)
                parent = "/" + "/".join(parts[: depth + 1])
        for path in (*self.leaf_paths(), *self.fixed_nodes()):
            parts = path.strip("/").split("/")
            nodes.update("/" + "/".join(parts[:i]) for i in range(1, len(parts)))
        nodes.update(self.fixed_nodes())
        self._nodes, self._children = nodes, children

    def nodes(self) -> set[str]:
        if self._nodes is None:
            self._build()
        assert self._nodes is not None
        return self._nodes

    def children(self, path: str) -> set[str]:
        if self._children is None:
            self._build()
        assert self._children is not None
        return self._children.get(path, set())

    def is_leaf(self, path: str) -> bool:
        return path in self.leaf_paths()

    def kind_of(self, path: str) -> Kind | None:
        if self.is_leaf(path):
            return "leaf"
        if path == "/":
            return "root"
        if path in self.nodes():
            return "node"
        return None

    def _table(self, kind: Kind) -> dict[str, Method]:
        return {"leaf": self.leaf_methods, "node": self.node_methods, "root": self.root_methods}[kind]

    def _known_member(self, member: str) -> bool:
        return member in self.leaf_methods or member in self.node_methods or member in self.root_methods

    # -- the raw handler ------------------------------------------------------------------------------
    def __call__(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        path, member, interface = msg.path, msg.member, msg.interface
        kind = self.kind_of(path)
        if interface == INTROSPECTABLE:
            if member == "Introspect" and kind is not None:
                return self._reply(msg, "s", [self.introspect(path, kind)])
            return None
        if kind is None:
            if interface == BUSITEM and path not in self.foreign_paths():
                return Message.new_error(msg, ErrorType.UNKNOWN_OBJECT, f"no item at {path}")
            return None
        method = self._table(kind).get(member)
        if method is None or (interface is not None and interface != method.interface):
            return None  # dbus-fast answers UnknownMethod, or a foreign interface handles it
        if msg.signature != method.in_sig:
            return Message.new_error(
                msg, ErrorType.INVALID_ARGS, f"{member} takes '{method.in_sig}', got '{msg.signature}'"
            )
        try:
            result = method.fn(path, *msg.body)
        except DBusError as exc:
            return exc._as_message(msg)
        except Exception:
            log.exception("%s on %s failed", member, path)
            return Message.new_error(msg, ErrorType.FAILED, f"{member} on {path} failed")
        return self._reply(msg, method.out_sig, method.body(result))

    @staticmethod
    def _reply(msg: Message, signature: str, body: list[Any]) -> Message | bool:
        if int(msg.flags) & MessageFlag.NO_REPLY_EXPECTED.value:
            return True
        return Message.new_method_return(msg, signature, body)

    # -- introspection ----------------------------------------------------------------------------------
    def introspect(self, path: str, kind: Kind) -> str:
        methods = [m.introspect() for m in self._table(kind).values() if m.interface == BUSITEM]
        node = intr.Node(path)
        node.interfaces.append(
            intr.Interface(INTROSPECTABLE, methods=[intr.Method("Introspect", out_args=[intr.Arg("s", ArgDirection.OUT)])])
        )
        node.interfaces.append(intr.Interface(BUSITEM, methods=methods, signals=list(self.signals.get(kind, []))))
        others: dict[str, list[intr.Method]] = {}
        for m in self._table(kind).values():
            if m.interface != BUSITEM:
                others.setdefault(m.interface, []).append(m.introspect())
        node.interfaces.extend(intr.Interface(name, methods=ms) for name, ms in others.items())
        node.interfaces.extend(self.foreign_interfaces(path))
        node.nodes = [intr.Node(child, is_root=False) for child in sorted(self.children(path))]
        return node.tostring()


def signal(name: str, signature: str) -> intr.Signal:
    return intr.Signal(name, [intr.Arg(signature)])
