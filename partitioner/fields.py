"""Reading parsed JSON field by field, so that an edited or damaged file is refused in one line naming the field.

Each `from_dict` of a plan's parts (and of a profile) reads its fields through these checks: the type, a
finite figure, the range. A `FieldError` names the field's path (`problem.nodes[3].compute_seconds.cuda-h100`);
`within` prefixes the path as a part is read inside another, and the reader of the whole file adds the file
and the fix. Figures JSON cannot hold (NaN, Infinity) are refused as well, since Python's json reads them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")
REQUIRED: Any = object()  # the default of a field that must be present
MOST_WHOLE = 2**63 - 1  # what a 64-bit integer holds: no count, size or FLOP total a file records comes near it


class FieldError(ValueError):
    """A field that is missing, of the wrong type or out of range; `path` names it from the top of the file."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"field '{path}': {problem}")
        self.path = path
        self.problem = problem


def within(prefix: str, read: Callable[[Any], T], found: Any) -> T:
    """`read(found)`, with the fields it names placed under `prefix` (`nodes[3]` and `name`: `nodes[3].name`)."""
    try:
        return read(found)
    except FieldError as error:
        joined = prefix + error.path if not error.path or error.path.startswith("[") else f"{prefix}.{error.path}"
        raise FieldError(joined, error.problem) from None


def value(data: Mapping, key: str, default: Any = REQUIRED) -> Any:
    """The field `key` of `data`; absent or null, `default`, or a FieldError if it has none."""
    found = data.get(key)
    if found is None:
        if default is REQUIRED:
            raise FieldError(key, "missing" if key not in data else "null where a value belongs")
        return default
    return found


def _absent(data: Mapping, key: str, default: Any) -> bool:
    """Whether an optional field is absent (or null), so that its default stands unchecked."""
    return default is not REQUIRED and data.get(key) is None


def table(data: Mapping, key: str, default: Any = REQUIRED) -> Mapping:
    """A field holding a JSON object."""
    found = value(data, key, default)
    if not isinstance(found, Mapping):
        raise FieldError(key, f"expected an object, got {_shown(found)}")
    return found


def items(data: Mapping, key: str, default: Any = REQUIRED) -> list:
    """A field holding a JSON array."""
    found = value(data, key, default)
    if not isinstance(found, (list, tuple)):
        raise FieldError(key, f"expected a list, got {_shown(found)}")
    return list(found)


def text(data: Mapping, key: str, default: Any = REQUIRED, *, choices: Any = None) -> str:
    """A field holding a string (one of `choices`, when given)."""
    if _absent(data, key, default):
        return default
    found = value(data, key)
    if not isinstance(found, str):
        raise FieldError(key, f"expected a string, got {_shown(found)}")
    if choices is not None and found not in choices:
        listed = sorted(choices)
        known = ", ".join(listed) if len(listed) <= 8 else f"the {len(listed)} known here, e.g. {', '.join(listed[:3])}"
        raise FieldError(key, f"{found!r} is not one of {known}")
    return found


def number(data: Mapping, key: str, default: Any = REQUIRED, *, minimum: float = 0.0, above: bool = False,
           maximum: float = math.inf) -> float:
    """A field holding a finite number of at least `minimum` (above it, with `above`) and at most `maximum`."""
    if _absent(data, key, default):
        return default
    found = data[key]
    if isinstance(found, bool) or not isinstance(found, (int, float)):
        raise FieldError(key, f"expected a number, got {_shown(found)}")
    if not math.isfinite(found):
        raise FieldError(key, f"{found} is not a finite number")
    if found < minimum or (above and found == minimum):
        raise FieldError(key, f"{found:g} is {'not above' if above else 'below'} {minimum:g}")
    if found > maximum:
        raise FieldError(key, f"{found:g} is above {maximum:g}")
    return float(found)


def whole(data: Mapping, key: str, default: Any = REQUIRED, *, minimum: int = 0, maximum: int = MOST_WHOLE) -> int:
    """A field holding a whole number of at least `minimum` and at most `maximum`."""
    if _absent(data, key, default):
        return default
    found = value(data, key)
    if isinstance(found, bool) or not isinstance(found, int):
        raise FieldError(key, f"expected a whole number, got {_shown(found)}")
    if found < minimum:
        raise FieldError(key, f"{found} is below {minimum}")
    if found > maximum:
        raise FieldError(key, f"{_shown(found)} is above {maximum}")
    return found


def flag(data: Mapping, key: str, default: Any = REQUIRED) -> bool:
    """A field holding true or false."""
    if _absent(data, key, default):
        return default
    found = value(data, key)
    if not isinstance(found, bool):
        raise FieldError(key, f"expected true or false, got {_shown(found)}")
    return found


def texts(data: Mapping, key: str, default: Any = REQUIRED) -> tuple[str, ...]:
    """A field holding a list of strings."""
    return listed(data, key, _string, default)


def sizes(found: Any, unknown: bool = False) -> tuple[int | None, ...]:
    """`found` as a tensor's shape: whole numbers of at least 0 (or null, a size known only at run time, where
    `unknown` allows it)."""
    return each(found, lambda size: size if size is None and unknown else _size(size))


def _size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MOST_WHOLE:
        raise FieldError("", f"{_shown(size)} is not a size (a whole number of at least 0)")
    return size


def text_lists(found: Any, depth: int) -> Any:
    """`found` as lists of strings `depth` lists deep (a problem's blocks: families of blocks of node names)."""
    return each(found, lambda item: text_lists(item, depth - 1)) if depth > 0 else _string(found)


def each(found: Any, read: Callable[[Any], T]) -> tuple[T, ...]:
    """`found`, a list, each item read by `read` (its fields named `[index]...`)."""
    if not isinstance(found, (list, tuple)):
        raise FieldError("", f"expected a list, got {_shown(found)}")
    return tuple(within(f"[{index}]", read, item) for index, item in enumerate(found))


def exactly(found: Any, count: int, read: Callable[[Any], T], shape: str) -> tuple[T, ...]:
    """`found`, a list of `count` items (written as `shape`, e.g. "[tokens, share]"), each read by `read`."""
    items = each(found, read)
    if len(items) != count:
        raise FieldError("", f"expected {shape}, got {len(items)} items")
    return items


def listed(data: Mapping, key: str, read: Callable[[Any], T], default: Any = REQUIRED) -> tuple[T, ...]:
    """A field holding a list, each item read by `read` (its fields named `key[index]...`)."""
    return within(key, lambda found: each(found, read), items(data, key, default))


def records(data: Mapping, key: str, read: Callable[[Mapping], T], default: Any = REQUIRED) -> tuple[T, ...]:
    """A field holding a list of objects, each read by `read` (its fields named `key[index].field`)."""
    return listed(data, key, lambda item: read(_object(item)), default)


def entries(data: Mapping, key: str, check: Callable[..., T], default: Any = REQUIRED, **limits: Any) -> dict[str, T]:
    """A field holding an object of name -> value, each value read by `check` (`text`, `number`, `whole`, ...)
    with `limits` (its fields named `key.name`)."""
    found = table(data, key, default)
    return {name: within(key, lambda entry: check(entry, name, **limits), found) for name in found}


def part(data: Mapping, key: str, read: Callable[[Mapping], T]) -> T:
    """A field holding one object, read by `read` (its fields named `key.field`)."""
    return within(key, read, table(data, key))


def _string(found: Any) -> str:
    if not isinstance(found, str):
        raise FieldError("", f"expected a string, got {_shown(found)}")
    return found


def _object(item: Any) -> Mapping:
    if not isinstance(item, Mapping):
        raise FieldError("", f"expected an object, got {_shown(item)}")
    return item


def _shown(found: Any) -> str:
    """`found` as a message shows it: itself, or what it is when it is long."""
    shown = repr(found)
    if len(shown) <= 40:
        return shown
    if isinstance(found, int):
        return f"a number of {len(str(abs(found)))} digits"
    kind = {"str": "string", "dict": "object"}.get(type(found).__name__, type(found).__name__)
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind} of {len(found)} {'characters' if isinstance(found, str) else 'items'}"
