"""Values read from JSON config files, checked: each problem is one message naming the field.

A field that is absent (or null, as transformers writes its defaults) takes its default; a
field that is present must be valid: 0, a string or NaN is an error naming the field, never a
silent default. Values are not coerced (4096.7 is not an integer, "7" not a number); JSON
integers are accepted where a float is expected.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

MAX_INT = 2 ** 31 - 1  # MLX's int32 shapes


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(problems: list[str], name: str, value: Any, most: int = MAX_INT,
              least: int = 1) -> None:
    if not is_int(value) or not least <= value <= most:
        problems.append(f"{name} must be an integer in [{least}, {most}], got {value!r}")


def check_number(problems: list[str], name: str, value: Any, above: float | None = None,
                 at_least: float | None = None) -> None:
    """A finite number, > `above` and >= `at_least` where given."""
    # An integer beyond float64's range is not a finite float (math.isfinite would overflow).
    finite = (is_int(value) and abs(value) < 2 ** 1023) or (
        isinstance(value, float) and math.isfinite(value))
    if not finite:
        problems.append(f"{name} must be a finite number, got {value!r}")
    elif above is not None and not value > above:
        problems.append(f"{name} must be > {above:g}, got {value!r}")
    elif at_least is not None and not value >= at_least:
        problems.append(f"{name} must be >= {at_least:g}, got {value!r}")


def check_token_ids(problems: list[str], name: str, value: Any, many: bool) -> None:
    ids = value if many and isinstance(value, tuple) else (value,)
    if value is None or (ids and all(is_int(t) and 0 <= t <= MAX_INT for t in ids)):
        return
    kind = "a token id, a list of token ids" if many else "a token id"
    problems.append(f"{name} must be {kind} or null (ids are integers >= 0), got {value!r}")


def as_float(value: Any) -> Any:
    """A JSON integer read as the float it stands for; anything else as it is (validated
    later). Integers too large for a float stay integers and fail the finiteness check."""
    if is_int(value) and abs(value) < 2 ** 1023:
        return float(value)
    return value


def given(d: dict[str, Any], name: str, default: Any) -> Any:
    """`d[name]`, or `default` when it is absent or null (never when it is 0 or "")."""
    value = d.get(name)
    return default if value is None else value


def present(**values: Any) -> dict[str, Any]:
    """The values that are given (not None): the others keep the dataclass's defaults."""
    return {name: value for name, value in values.items() if value is not None}


def first_given(d: dict[str, Any], *names: str) -> Any:
    return next((d[n] for n in names if d.get(n) is not None), None)


def valid_int(d: dict[str, Any], name: str, most: int = MAX_INT,
              default: int | None = None) -> int:
    """A field other values are derived from, checked before they are."""
    value = given(d, name, default)
    problems: list[str] = []
    check_int(problems, name, value, most=most)
    if problems:
        raise ConfigError(problems[0])
    return value


def valid_number(d: dict[str, Any], name: str, default: float, **bounds: float) -> float:
    value = as_float(given(d, name, default))
    problems: list[str] = []
    check_number(problems, name, value, **bounds)
    if problems:
        raise ConfigError(problems[0])
    return value


def require(d: dict[str, Any], *names: str, extra: dict[str, Any] | None = None) -> None:
    missing = [n for n in names if d.get(n) is None]
    missing += [n for n, v in (extra or {}).items() if v is None]
    if missing:
        raise ConfigError(f"config is missing required field(s): {', '.join(missing)}")
