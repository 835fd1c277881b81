"""A fast deep copy of a live proxy, for the fuzzer's branches.

``copy.deepcopy`` works but spends most of its time in generic dispatch; the state of
the core is plain: objects with ``__slots__`` or a ``__dict__``, lists, dicts, deques,
tuples, sets, ints and bytes. This copies exactly that, shares what is immutable
(enum members, frozen dataclasses such as events, functions, configuration
dataclasses), and falls back to ``copy.deepcopy`` for anything else.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import types
from collections import Counter, deque
from enum import Enum

_ATOMS = {int, float, str, bytes, bool, type(None), complex, range}
_FUNCS = (types.FunctionType, types.MethodType, types.BuiltinFunctionType,
          types.BuiltinMethodType)
_SLOTS: dict[type, tuple] = {}
_SHARED_TYPES: set = set()  # dataclasses that are frozen, or configuration


def _slots(cls) -> tuple:
    s = _SLOTS.get(cls)
    if s is None:
        names = []
        for c in cls.__mro__:
            for n in getattr(c, "__slots__", ()):
                if n not in ("__dict__", "__weakref__") and n not in names:
                    names.append(n)
        s = _SLOTS[cls] = tuple(names)
    return s


def _shared(cls) -> bool:
    if cls in _SHARED_TYPES:
        return True
    if dataclasses.is_dataclass(cls):
        params = getattr(cls, "__dataclass_params__", None)
        if (params is not None and params.frozen) or cls.__name__.endswith("Config"):
            _SHARED_TYPES.add(cls)
            return True
    return False


def fork(obj):
    """An independent copy of ``obj`` (a proxy, a (proxy, pm) tuple, ...)."""
    return _copy(obj, {})


def _copy(v, memo: dict):
    t = type(v)
    if t in _ATOMS:
        return v
    i = id(v)
    r = memo.get(i)
    if r is not None:
        return r
    if t is list:
        r = []
        memo[i] = r
        r.extend([x if type(x) in _ATOMS else _copy(x, memo) for x in v])
        return r
    if t is tuple:
        items = [x if type(x) in _ATOMS else _copy(x, memo) for x in v]
        r = tuple(items)
        memo[i] = r
        return r
    if t is dict:
        r = {}
        memo[i] = r
        for k, x in v.items():
            r[k if type(k) in _ATOMS else _copy(k, memo)] = \
                x if type(x) in _ATOMS else _copy(x, memo)
        return r
    if t is deque:
        r = deque(maxlen=v.maxlen)
        memo[i] = r
        r.extend(x if type(x) in _ATOMS else _copy(x, memo) for x in v)
        return r
    if t is bytearray:
        r = bytearray(v)
        memo[i] = r
        return r
    if t in (set, frozenset):
        r = t(_copy(x, memo) for x in v)
        memo[i] = r
        return r
    if isinstance(v, Enum) or isinstance(v, _FUNCS) or _shared(t):
        return v
    if isinstance(v, Counter):
        r = t(v)
        memo[i] = r
        return r
    if isinstance(v, random.Random):
        r = t()
        r.setstate(v.getstate())
        memo[i] = r
        return r
    if t.__module__.startswith(("mptcp_proxy", "tests.fuzz")) or hasattr(v, "__dict__"):
        r = t.__new__(t)
        memo[i] = r
        for n in _slots(t):
            try:
                x = getattr(v, n)
            except AttributeError:
                continue
            object.__setattr__(r, n, x if type(x) in _ATOMS else _copy(x, memo))
        d = getattr(v, "__dict__", None)
        if d is not None:
            for n, x in d.items():
                object.__setattr__(r, n, x if type(x) in _ATOMS else _copy(x, memo))
        return r
    r = copy.deepcopy(v, memo)
    return r
