"""Checks of the values a user passes in, shared by every config and public function.

Each ``check_*`` function validates one value and returns it normalised (numpy scalars become
Python numbers, sequences become tuples), or raises an error whose message names the parameter and
what is allowed, always in the form ``"<name> must be <what is allowed>, got <value!r>"``:

- a value of the wrong type raises :class:`ParameterTypeError`, which is both a ``TypeError`` and a
  ``ValueError`` (so code that catches ``ValueError`` for any bad argument keeps working);
- a value of the right type but outside its range or its set of choices raises ``ValueError``.

Types follow one rule everywhere: ``bool`` is not a number (``True`` is refused where an int or a
float is expected), numpy integer and floating scalars are accepted as numbers, an int is accepted
where a float is expected, and a float is never accepted where an int is expected.

:func:`check_output_dir` checks a folder a writer is about to fill, before any long work.
:func:`check_default` refuses a parameter set away from its default where it has no effect (an
option of another method, kind or structure), instead of ignoring it.
:func:`canonical` turns a configuration into a canonical JSON-ready value for fingerprints (``0``
and ``0.0`` are the same number, a 1-tuple is its value).

Pure: imports nothing from the rest of the library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


class ParameterTypeError(TypeError, ValueError):
    """A value of the wrong type (also a ``ValueError``, see the module docstring)."""


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """True for Python and numpy integers and floats, False for bools (and complex numbers)."""
    return is_int(value) or isinstance(value, (float, np.floating))


def _fmt(bound) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_fmt(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_fmt(high)}"
    return ""


def _or_none(what: str, optional: bool) -> str:
    return f"{what} or None" if optional else what


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, optional: bool = False) -> int | None:
    """An int in ``[low, high]`` (either bound may be None), or None when ``optional``."""
    if low == 1 and high is None:
        what = "a positive int"
    else:
        what = f"an int {_interval(low, high, False, False)}".rstrip()
    what = _or_none(what, optional)
    if value is None and optional:
        return None
    if not is_int(value):
        raise ParameterTypeError(f"{name} must be {what}, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    optional: bool = False,
) -> float | None:
    """A number (int or float, not bool) in the given interval, returned as a float.

    Args:
        low, high: bounds (None: unbounded); ``low_open`` / ``high_open`` exclude them.
        finite: refuse NaN and +-inf (NaN is refused always).
        optional: None is allowed and returned.
    """
    bounded = low is not None and high is not None  # "finite" goes without saying in an interval
    what = "a finite number" if finite and not bounded else "a number"
    what = _or_none(f"{what} {_interval(low, high, low_open, high_open)}".rstrip(), optional)
    if value is None and optional:
        return None
    if not is_number(value):
        raise ParameterTypeError(f"{name} must be {what}, got {value!r}")
    f = float(value)
    bad = math.isnan(f) or (finite and math.isinf(f))
    bad = bad or (low is not None and (f <= low if low_open else f < low))
    bad = bad or (high is not None and (f >= high if high_open else f > high))
    if bad:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return f


def check_probability(name: str, value: Any, *, optional: bool = False) -> float | None:
    """A probability: a number in [0, 1]."""
    what = _or_none("a probability in [0, 1]", optional)
    if value is None and optional:
        return None
    if not is_number(value):
        raise ParameterTypeError(f"{name} must be {what}, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """A bool (Python or numpy); ints and strings such as ``"no"`` are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterTypeError(f"{name} must be a bool (True or False), got {value!r}")
    return bool(value)


def check_default(name: str, value: Any, default: Any, context: str, instead: str) -> None:
    """A parameter that has no effect in ``context`` (e.g. ``"method='chunked'"``) must keep its
    ``default``: setting it would otherwise be silently ignored. ``instead`` says what uses it.

    Raises:
        ValueError: ``value != default``, naming the parameter, the context and what to do.
    """
    if value != default:
        raise ValueError(
            f"{name}={value!r} has no effect with {context}; leave it at its default {default!r} or use {instead}"
        )


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """One of ``allowed`` (strings)."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        err = ValueError if isinstance(value, str) else ParameterTypeError
        raise err(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False, optional: bool = False) -> str | None:
    """A string (non-empty unless ``empty``), or None when ``optional``."""
    what = _or_none("a str" if empty else "a non-empty str", optional)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ParameterTypeError(f"{name} must be {what}, got {value!r}")
    if not empty and not value:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_instance(name: str, value: Any, cls: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """An instance of ``cls`` (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, cls):
        names = " or ".join(c.__qualname__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        what = _or_none(f"a {names}", optional)
        raise ParameterTypeError(f"{name} must be {what}, got {type(value).__name__} {_short_repr(value)}")
    return value


def check_callable(name: str, value: Any) -> Any:
    """Something callable (a function, a sampler ...)."""
    if not callable(value):
        raise ParameterTypeError(f"{name} must be callable, got {type(value).__name__} {_short_repr(value)}")
    return value


def check_numbers(
    name: str, value: Any, low: float | None = None, *, low_open: bool = False, nonempty: bool = True
) -> tuple[float, ...]:
    """A sequence (list, tuple, 1-D array or tensor, pandas Series) of finite numbers >= (or >)
    ``low``, as a tuple of floats."""
    array_like = hasattr(value, "__array__") and not isinstance(value, (np.generic, Tensor))
    if isinstance(value, (str, bytes)) or not (isinstance(value, (Sequence, Tensor)) or array_like):
        raise ParameterTypeError(f"{name} must be a sequence of numbers, got {_short_repr(value)}")
    if isinstance(value, Tensor):
        values = value.tolist() if value.ndim == 1 else [value]
    elif array_like:
        arr = np.asarray(value)
        values = arr.tolist() if arr.ndim == 1 else [value]
    else:
        values = list(value)
    if nonempty and not values:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    return tuple(check_float(f"{name}[{i}]", v, low, low_open=low_open) for i, v in enumerate(values))


def check_columns(name: str, table: Any, columns: Iterable[str]) -> None:
    """A table (a pandas DataFrame: anything with ``.columns``) that has every one of ``columns``."""
    if not hasattr(table, "columns"):
        raise ParameterTypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    columns = [columns] if isinstance(columns, str) else list(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing}; its columns are {list(table.columns)}")


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_tensor(
    name: str,
    x: Any,
    ndim: int | tuple[int, ...] | None = None,
    *,
    finite: bool = True,
    floating: bool = False,
    arrays: bool = False,
    to_float: bool = False,
) -> Tensor:
    """A tensor with ``ndim`` dimensions (one of them, for a tuple) and, when ``finite``, no NaN or
    inf. ``arrays`` also accepts numpy arrays (returned as tensors); ``floating`` requires a floating
    dtype; ``to_float`` converts integer and bool values to float64 instead (exact for integers up
    to 2**53), for functions that compute means and variances."""
    if arrays and isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind in "USV":
            raise ParameterTypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        x = torch.as_tensor(x)
    if not isinstance(x, Tensor):
        kinds = "a tensor or numpy array" if arrays else "a tensor"
        raise ParameterTypeError(f"{name} must be {kinds}, got {type(x).__name__} {_short_repr(x)}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if to_float and not (x.is_floating_point() or x.is_complex()):
        x = x.to(torch.float64)
    if floating and not x.is_floating_point():
        raise ParameterTypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if finite and (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def check_output_dir(name: str, path: Any) -> Path:
    """A folder a writer may create or write into, checked before any work is done.

    Refuses a path that is an existing file, that lies under a file, or whose nearest existing
    ancestor cannot be written to. Creates nothing.
    """
    if not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path):
        raise ParameterTypeError(f"{name} must be a folder path (str or Path), got {_short_repr(path)}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name} must be a folder, got the file {str(p)!r}; pass a folder path (created if missing)")
    ancestor = p
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{name} must be a folder path, got {str(p)!r}, which lies under the file {str(ancestor)!r}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}={str(p)!r}: the folder {str(ancestor)!r} is not writable")
    return p


def canonical(obj: Any) -> Any:
    """A canonical JSON-ready form of a configuration, for fingerprints and run keys.

    Dataclasses become dicts of their fields, numbers become ints when integral (so ``0 == 0.0``
    and ``np.float32(1) == 1``), a 1-element tuple or list becomes its element (``(x,) == x``),
    other sequences become lists, dict keys strings, paths strings. Any other type is refused, so a
    fingerprint never depends on an object's ``repr``.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if is_number(obj):
        f = float(obj)
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    if isinstance(obj, (list, tuple)):
        items = [canonical(v) for v in obj]
        return items[0] if len(items) == 1 else items
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ParameterTypeError(f"cannot fingerprint a value of type {type(obj).__name__}: {_short_repr(obj)}")


def canonical_json(obj: Any) -> str:
    """``canonical(obj)`` as compact JSON with sorted keys: equal configurations give equal strings."""
    return json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
