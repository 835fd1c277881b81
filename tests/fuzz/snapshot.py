"""A snapshot of the proxy's state, read from public attributes, and its diff.

Generic on purpose (the core is being restructured): it walks every object of a class
defined under ``mptcp_proxy.core`` reachable from the proxy, through their public
attributes (``__slots__`` of every class in the MRO, and ``__dict__``), skipping names
that start with ``_``, callables, the back-references and configuration listed in
:data:`SKIP`. Each object is recorded once, by identity; containers are copied as plain
values and references to other core objects kept as identities, so an attribute that
now refers to another object (``Connection.active`` after a handover) is one change.

Used by the fuzzer's "a segment with a bad TCP checksum changes nothing" invariant
and by the bounded-state check (:func:`containers`).
"""

from __future__ import annotations

from collections import deque
from enum import Enum

SKIP = frozenset({
    "proxy", "counters", "config", "random_bytes", "alloc_port", "release_port", "now",
})
_ATOMS = (type(None), bool, int, float, str, bytes)


def _attr_names(cls) -> list[str]:
    names = []
    for c in cls.__mro__:
        for n in getattr(c, "__slots__", ()):
            if n not in ("__dict__", "__weakref__") and n not in names:
                names.append(n)
    return names


_NAMES: dict[type, list[str]] = {}


_CORE: dict[type, bool] = {}


def _is_core(obj) -> bool:
    t = type(obj)
    r = _CORE.get(t)
    if r is None:
        r = _CORE[t] = t.__module__.startswith("mptcp_proxy.core") and not issubclass(t, Enum)
    return r


def _label(v) -> str:
    """A readable name for a core object: its class, and its connection id or subflow
    index when it has one."""
    cls = type(v).__name__
    for n in ("id", "index", "name"):
        x = getattr(v, n, None)
        if isinstance(x, (int, str)) and not callable(x):
            return f"{cls}[{x}]"
    return cls


def _plain(v, pending: list):
    """``v`` as plain values; core objects become ``("@", id)`` and are queued."""
    if isinstance(v, Enum):
        return (type(v).__name__, v.name)
    if isinstance(v, _ATOMS):
        return v
    if isinstance(v, bytearray):
        return bytes(v)
    if isinstance(v, (list, tuple, deque)):
        return [_plain(x, pending) for x in v]
    if isinstance(v, dict):
        return {"__dict__": sorted(((repr(_plain(k, pending)), _plain(x, pending))
                                    for k, x in v.items()), key=lambda kv: kv[0])}
    if isinstance(v, (set, frozenset)):
        return {"__set__": sorted(repr(_plain(x, pending)) for x in v)}
    if _is_core(v):
        pending.append(v)
        return ("@", id(v))
    if callable(v):
        return "<callable>"
    return repr(v)


def public_attributes(v) -> dict:
    cls = type(v)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = _attr_names(cls)
    attrs = list(names)
    if hasattr(v, "__dict__"):
        attrs += [n for n in vars(v) if n not in attrs]
    out = {}
    for n in attrs:
        if n.startswith("_") or n in SKIP:
            continue
        try:
            x = getattr(v, n)
        except AttributeError:
            continue
        if callable(x) and not _is_core(x):
            continue
        out[n] = x
    return out


def snapshot(proxy) -> dict:
    """The state of ``proxy`` (and its path manager): every core object reachable from
    it, by identity, with its public attributes as plain values (references to other
    core objects as ``("@", id)``), plus the next timer due (``get_timer()``)."""
    objects: dict[int, dict] = {}
    pending = [proxy]
    while pending:
        v = pending.pop()
        if id(v) in objects:
            continue
        rec = {"__class__": _label(v)}
        objects[id(v)] = rec
        for n, x in public_attributes(v).items():
            rec[n] = _plain(x, pending)
    return {"root": id(proxy), "objects": objects, "timer": proxy.get_timer()}


def diff(a: dict, b: dict, limit: int = 40) -> list[tuple[str, str]]:
    """Where snapshots ``a`` and ``b`` differ: ``(path, "Class.attr")`` pairs, the path
    naming the object (``Connection[1].r_fwd``), the second its class and attribute."""
    out: list[tuple[str, str]] = []
    if a.get("timer") != b.get("timer"):
        out.append(("timer", "timer"))
    oa, ob = a["objects"], b["objects"]
    for oid in list(oa) + [k for k in ob if k not in oa]:
        if len(out) >= limit:
            break
        ra, rb = oa.get(oid), ob.get(oid)
        if ra is None or rb is None:
            r = ra or rb
            name = r["__class__"]
            cls = name.split("[")[0]
            out.append((f"{name} {'created' if ra is None else 'dropped'}", cls))
            continue
        if ra == rb:
            continue
        name = ra["__class__"]
        cls = name.split("[")[0]
        for k in sorted(set(ra) | set(rb)):
            if k != "__class__" and ra.get(k) != rb.get(k):
                out.append((f"{name}.{k}", f"{cls}.{k}"))
    return out


def containers(proxy, limit: int) -> list[tuple[str, int]]:
    """Every list/dict/deque/set held by a core object reachable from ``proxy`` whose
    length exceeds ``limit``: ``(Class.attr, length)`` (the bounded-state check).
    Private attributes count too (memory is memory). A container's items are searched
    for further core objects only if its first item holds one (they are homogeneous)."""
    found: list[tuple[str, int]] = []
    seen: set[int] = set()
    stack = [proxy]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        cls = type(v)
        names = _NAMES.get(cls)
        if names is None:
            names = _attr_names(cls)
            _NAMES[cls] = names
        attrs = list(names) + (list(vars(v)) if hasattr(v, "__dict__") else [])
        for n in attrs:
            if n in SKIP:
                continue
            x = getattr(v, n, None)
            if isinstance(x, (list, dict, deque, set)):
                if len(x) > limit:
                    found.append((f"{cls.__name__}.{n}", len(x)))
                items = list(x.values()) if isinstance(x, dict) else list(x)
                if not items:
                    continue
                y0 = items[0]
                if _is_core(y0):
                    stack.extend(y for y in items if _is_core(y))
                elif isinstance(y0, (tuple, list)) and any(_is_core(z) for z in y0):
                    for y in items:
                        stack.extend(z for z in y if _is_core(z))
            elif _is_core(x) and not callable(x):
                stack.append(x)
    return found
