"""One config mechanism: YAML recipes with ``base:`` inheritance and dotted ``key=value`` overrides, turned into
typed, nested dataclasses that are checked (types, ranges, choices, unknown keys) before any work starts.

    cfg = load_recipe(PretrainConfig, "configs/pretrain/tiny.yaml", ["train.max_steps=50"])

A recipe is a nested mapping read with a YAML safe loader. Overrides may only set keys that already exist in the
recipe (a typo is an error, not a silently ignored key); values are parsed as YAML scalars, so ``lr=1e-3`` is a
float and ``names=[a,b]`` a list. Validation is pydantic's, run over plain dataclasses: a field declares its range
or choices in its type (``Ratio``, ``Literal["skip", "fail"]``, ...), and a bad value gives one line naming the key,
the value and what was expected (:class:`ConfigError`).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping, TypeVar

import yaml
from annotated_types import Ge, Gt, Interval

from .io import atomic_write_text

T = TypeVar("T")

# Types with a range, for config fields (pydantic checks them at load; plain construction does not).
Ratio = Annotated[float, Interval(ge=0.0, lt=1.0)]  # a fraction in [0, 1)
Probability = Annotated[float, Interval(ge=0.0, le=1.0)]
NonNegInt = Annotated[int, Ge(0)]
PositiveInt = Annotated[int, Gt(0)]
NonNegFloat = Annotated[float, Ge(0.0)]
PositiveFloat = Annotated[float, Gt(0.0)]


class _FloatSafeLoader(yaml.SafeLoader):
    """Safe loader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 does."""


_FloatSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def safe_load(text: str):
    return yaml.load(text, Loader=_FloatSafeLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A recipe or override a user wrote is wrong; the message names the key and the reason."""


def _merge(base: dict, extra: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """A recipe file as a dict; ``base: other.yaml`` (relative to the file) is read first and overridden."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = _merge(read_yaml(path.parent / base), data)
    return data


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = cfg
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {key!r}: unknown key {'.'.join(parts[:i + 1])!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"override {key!r}: unknown key {key!r}")
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"override {key!r}: cannot parse value {raw!r} as YAML ({why}; quote the whole "
                              "key=value argument if it holds spaces)") from None
        node[parts[-1]] = value
    return cfg


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Read a recipe, apply ``key=value`` overrides, return the resolved nested dict (not yet validated)."""
    return apply_overrides(read_yaml(path), overrides)


# ------------------------------------------------------------------------------------------------- validation
def _dataclasses_in(cls, seen: set) -> None:
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        stack = [hints.get(f.name)]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                _dataclasses_in(t, seen)
            stack.extend(typing.get_args(t))


def _adapter(cls):
    from pydantic import ConfigDict, TypeAdapter

    classes: set = set()
    _dataclasses_in(cls, classes)
    for c in classes:  # unknown keys are errors at every level
        if "__pydantic_config__" not in c.__dict__:
            c.__pydantic_config__ = ConfigDict(extra="forbid")
    return TypeAdapter(cls)


def _one_line(exc, where: str, data: Any) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: unknown key {key!r}"
    if err["type"] == "value_error":  # raised by a dataclass's own __post_init__ check
        msg = err["msg"].removeprefix("Value error, ")
        return f"{where}: {key + ': ' if key else ''}{msg}"
    if err["type"] == "missing_argument":
        return f"{where}: {key} is required"
    value = err.get("input")
    return f"{where}: {key}={value!r}: {err['msg'][0].lower() + err['msg'][1:]}"


def parse_config(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Dataclass ``cls`` (nested sections included) from a plain mapping, checked; a bad value is a ConfigError
    naming the key, the value and what was expected."""
    from pydantic import ValidationError

    where = where or f"{cls.__name__} config"
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return _adapter(cls).validate_python(dict(data or {}))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, where, data)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_recipe(cls: type[T], path: str | os.PathLike, overrides: Iterable[str] = (), *,
                where: str | None = None) -> tuple[T, dict]:
    """Read, override and validate a recipe: returns (typed config, resolved dict to save in the run folder)."""
    raw = load_config(path, overrides)
    return parse_config(cls, raw, where or f"config {path}"), raw


def save_yaml(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_plain(cfg), sort_keys=False))


def to_plain(obj):
    """Dataclasses, mappings and sequences as plain dicts/lists (for YAML/JSON)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """One section of a config (same checks as :func:`parse_config`)."""
    return parse_config(cls, data, where)
