"""YAML recipes with dotted ``key=value`` overrides.

A recipe is a nested mapping read with ``yaml.safe_load``. Overrides may only set keys that already exist in the
recipe (a typo is an error, not a silently ignored key); values are parsed as YAML scalars, so ``lr=1e-3`` is a
float and ``names=[a,b]`` a list. Sections are turned into dataclasses by :func:`from_dict`, which rejects unknown
keys, so every key a recipe carries is used by someone.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


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


def _merge(base: dict, extra: Mapping, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
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
    # ``base: other.yaml`` inherits from another recipe (relative to this file), then overrides it.
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
            raise ConfigError(f"override {key!r}: cannot parse value {raw!r}: {exc}") from None
        node[parts[-1]] = value
    return cfg


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Read a recipe, apply ``key=value`` overrides, return the resolved nested dict."""
    return apply_overrides(read_yaml(path), overrides)


def from_dict(cls, data: Mapping[str, Any] | None, where: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys are an error naming ``where``."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or cls.__name__}; known: {sorted(names)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value in {where or cls.__name__}: {exc}") from None


def save_yaml(cfg: Mapping, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
    os.replace(tmp, path)


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
