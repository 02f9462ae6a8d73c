"""What a config key may hold: ``Key`` (types, default and bounds) and ``check_value``, the one check of a
value against its key. A leaf module (it imports only ``errors``), so that a registry elsewhere (a sync
strategy declaring its option keys, say) can declare keys without importing ``distnet.config``.

Bounds are data: ``ge``/``gt``/``le``/``lt`` for numbers (inclusive or not), ``choices`` for strings (a tuple,
or a function returning the names: a registry's current contents), ``check`` for anything else (a function
returning None when the value is fine, else the words for what is allowed), ``path`` for a key naming a file
or folder (``Output`` or ``Input``: what it must be, checked where it is used). Every float must be finite.
"""

import math
from dataclasses import dataclass

from .errors import ConfigError

NUM = (int, float)

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "a table"}


@dataclass(frozen=True)
class Output:
    """A path key distnet writes to. ``kind`` "file" (replaced or appended) or "folder" (created, written in);
    ``what`` and ``flag`` name it in messages; ``ours`` names the ``distnet.outputs`` recognizer of a file
    distnet wrote (anything else in the way is a user error); ``replaced``: written by renaming a new file
    over it (a device or pipe cannot take that)."""

    kind: str
    what: str
    flag: str
    ours: str = ""
    replaced: bool = False


@dataclass(frozen=True)
class Input:
    """A path key distnet reads: ``what`` it must be (an existing folder), checked where it is used."""

    what: str
    flag: str


@dataclass(frozen=True)
class Key:
    """One config key: accepted ``types`` (a type or a tuple; an int is accepted where float is), its
    ``default`` and what values are allowed (see the module's docstring)."""

    types: object
    default: object
    ge: float = None
    gt: float = None
    le: float = None
    lt: float = None
    choices: object = None
    check: object = None
    path: object = None

    @property
    def type_tuple(self):
        return self.types if isinstance(self.types, tuple) else (self.types,)

    @property
    def numeric(self):
        return any(t in (int, float) for t in self.type_tuple)

    @property
    def bounded(self):
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def names(self):
        """The allowed strings (a registry's names now, where ``choices`` is a function); None: any."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def bounds_text(self):
        """``>= 0``, ``> 0``, ``in [0, 1)``: the numbers allowed, in words; "" when unbounded."""
        low = (self.ge, "[") if self.ge is not None else (self.gt, "(") if self.gt is not None else None
        high = (self.le, "]") if self.le is not None else (self.lt, ")") if self.lt is not None else None
        if low and high:
            return f"in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}"
        if low:
            return f"{'>=' if low[1] == '[' else '>'} {_num(low[0])}"
        if high:
            return f"{'<=' if high[1] == ']' else '<'} {_num(high[0])}"
        return ""

    def in_bounds(self, x):
        return not ((self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
                    or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt))

    def allowed(self):
        """What the key allows, in words: ``an integer >= 1 or "auto"``."""
        parts = []
        for t in self.type_tuple:
            if t is str and self.names() is not None:
                names = self.names()
                parts.append(f'"{names[0]}"' if len(names) == 1 else "one of " + ", ".join(names))
            elif t in (int, float) and self.bounded and not (t is int and float in self.type_tuple):
                parts.append(f"{_TYPE_NAMES[t]} {self.bounds_text()}")
            elif not (t is int and float in self.type_tuple):
                parts.append(_TYPE_NAMES[t])
        return " or ".join(dict.fromkeys(parts))


def _num(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def as_key(entry):
    """A ``Key`` from a schema entry: a Key, or a (types, default) pair (no bounds)."""
    return entry if isinstance(entry, Key) else Key(*entry)


def type_ok(key, value):
    """Whether ``value`` has one of ``key``'s types (a bool is not an int; an int is a float)."""
    types = key.type_tuple
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, types):
        return True
    return float in types and isinstance(value, int)


def normalized(key, value):
    """``value`` as stored: an int given for a number key (``NUM``, float) becomes a float."""
    types = key.type_tuple
    if isinstance(value, int) and not isinstance(value, bool) and float in types \
            and all(t in (int, float) for t in types):
        return float(value)
    return value


def check_value(name, key, value):
    """``value`` (normalized) if ``key`` allows it, else a ConfigError: ``config key NAME must be WHAT, got V``."""
    if not type_ok(key, value):
        raise ConfigError(f"config key {name} must be {key.allowed()}, got {value!r} ({type(value).__name__})")
    value = normalized(key, value)
    problem = None
    if isinstance(value, float) and not math.isfinite(value):
        problem = f"a finite number{' ' + key.bounds_text() if key.bounded else ''}"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and not key.in_bounds(value):
        problem = key.allowed()
    elif isinstance(value, str):
        names = key.names()
        if names is not None and value not in names:
            problem = key.allowed()
        elif "\x00" in value:
            problem = "a string without NUL characters"
    if problem is None and key.check is not None:
        problem = key.check(value)
    if problem:
        raise ConfigError(f"config key {name} must be {problem}, got {value!r}")
    return value


def printable(text):
    """``text`` for a one-line message: characters that are not printable (a newline, a NEL) escaped."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def nonfinite(value, name):
    """The first (name, value) inside ``value`` (nested tables and lists) that is a NaN or infinite float."""
    if isinstance(value, float) and not math.isfinite(value):
        return name, value
    if isinstance(value, dict):
        items = ((f"{name}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{name}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub, v in items:
        found = nonfinite(v, sub)
        if found:
            return found
    return None
