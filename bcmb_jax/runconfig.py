"""Run configs: nested dataclasses read from YAML with `key=value` overrides.

Fields carry a help text (`opt(default, "help")`); `load(cls, yaml_path, ["a.b=1", ...])` builds a config
and names any unknown key or badly typed value, and `help_text(cls)` lists every key for `--help`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from bcmb_jax.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Run configs: nested dataclasses + YAML + key=value overrides.


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text that `--help` prints."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently).

    The check walks the composed nodes before construction, which rewrites mappings that merge an
    anchor (`<<: *a`, whose keys may be overridden one by one)."""

    def construct_document(self, node):
        _check_unique_keys(node, set())
        return super().construct_document(node)


def _check_unique_keys(node, visited: set[int]) -> None:
    if id(node) in visited:  # an alias: the same node again
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value!r}",
                                                            key_node.start_mark)
                seen.add(key)
            _check_unique_keys(value_node, visited)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _check_unique_keys(child, visited)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=3", "c=x"]` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw.strip()[:1] not in ("'", '"'):
            value = raw.strip()  # an unquoted string stays as typed (YAML would read `|` or `>` as "")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (float, int) and isinstance(value, str):
        try:  # YAML 1.1 reads `3e-4` (no dot) as a string
            number = float(value)
        except ValueError:
            raise ConfigError(f"`{key}` must be {tp.__name__}, got {value!r}") from None
        if tp is float or number.is_integer():
            return tp(number)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if origin in (list, tuple) and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return origin(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    base = origin or tp
    if base is Any or isinstance(base, typing.TypeVar):
        return value
    if isinstance(base, type) and not isinstance(value, base):
        raise ConfigError(f"`{key}` must be {getattr(base, '__name__', base)}, got {value!r}")
    return value


def from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from a nested dict; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
                          f"(known under `{prefix or '.'}`: {', '.join(sorted(names))})")
    kw = {k: _coerce(hints[k], v, prefix + k) for k, v in d.items()}
    return cls(**kw)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
         section: str | None = None) -> Any:
    """Reads YAML `path` (optionally one `section` of it), applies `key=value` overrides, builds `cls`."""
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: a directory; expected a YAML config file (configs/*.yaml)")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            d = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            what = getattr(e, "problem", None) or " ".join(str(e).split())
            raise ConfigError(f"{where}: invalid YAML: {what}"
                              + (f" (column {mark.column + 1})" if mark is not None else "")) from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        if section is not None:
            d = d.get(section) or {}
    given = parse_overrides(overrides or [])
    try:
        return from_dict(cls, merge(d, given))
    except ConfigError as e:
        raise ConfigError(f"{_blame(str(e), overrides or [], path, section)}: {e}") from None


def _blame(message: str, overrides: list[str], path: Path | None, section: str | None = None) -> str:
    """Where a bad value came from: the command-line override the message names, else the config file."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        names = [key] + ([f"{section}.{key}"] if section else [])
        if key and (any(re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", message) for n in names)
                    or f"`{key.rsplit('.', 1)[-1]}`" in message):
            return f"command line ({item})"
    return str(path) if path is not None else "command line"


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field of dataclass `cls`, depth first."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += config_keys(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows


def help_text(cls: type) -> str:
    rows = config_keys(cls)
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:<{width}}  {h} [default: {d}]" for k, d, h in rows)
