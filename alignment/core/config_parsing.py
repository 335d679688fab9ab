"""Filling the typed configs from a YAML recipe, then from command-line overrides.

trl's ``TrlParser`` shape: ``--config recipe.yaml --learning_rate 1e-5``, flat keys with the Hugging Face names, the
command line winning over the file. Added: an unknown key is an error naming where it was written (``file:line``)
and the nearest known key, and ``--help`` is generated from each field's ``metadata["help"]``.

Hand-written rather than ``HfArgumentParser`` because that parser cannot report YAML line
numbers, has no nearest-key suggestion, and drags in the 100+-field ``TrainingArguments``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from alignment.core.config import Config, ConfigError, section_name


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping and the line of each key (``"key"`` and ``"section.key"``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    lines: dict[str, int] = {}

    def walk(n: Any, prefix: str, merged: bool = False) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                if key_node.value == "<<":  # a YAML merge: its keys are where the anchored mapping wrote them
                    for source in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                        walk(source, prefix, merged=True)
                    continue
                key = f"{prefix}{key_node.value}"
                if merged:
                    lines.setdefault(key, key_node.start_mark.line + 1)
                else:
                    lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".", merged)

    if node is not None:
        walk(node, "")
    return data, lines


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(annotation: Any) -> str:
    """A type as an error message names it: ``true or false``, ``'auto'``."""
    if annotation is bool:
        return "true or false"
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _takes_bool(annotation: Any) -> bool:
    """Whether a field is set by a bare ``--flag`` (a bool, alone or in a union such as ``bool | Literal["auto"]``)."""
    return annotation is bool or bool in typing.get_args(annotation)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type; raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], key)
        for member in non_none:  # the first member that takes the value (``bool | Literal["auto"]``)
            try:
                return _coerce(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"'{key}' expects {' or '.join(_describe(a) for a in non_none)}, got {value!r}")
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and value.lower() == str(choice).lower()):
                return choice
        raise ConfigError(f"'{key}' expects {_describe(annotation)}, got {value!r}")
    if origin in (list, tuple):
        (item_type,) = args[:1] or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_type, key) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' expects a mapping, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"'{key}' expects true or false, got {value!r}")
    if annotation in (int, float):
        try:
            number = float(value) if annotation is float else int(str(value).replace("_", ""))
        except (TypeError, ValueError):
            raise ConfigError(
                f"'{key}' expects {'a number' if annotation is float else 'an integer'}, got {value!r}"
            ) from None
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"'{key}' expects text, got {value!r}")
        return str(value)
    return value


def _argv_to_pairs(argv: list[str], bool_keys: set[str]) -> list[tuple[str, str | bool]]:
    pairs: list[tuple[str, str | bool]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options look like --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            pairs.append((key.replace("-", "_"), value))
            i += 1
            continue
        key = key.replace("-", "_")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if key in bool_keys and (nxt is None or nxt.startswith("--")):
            pairs.append((key, True))
            i += 1
        elif nxt is None or (nxt.startswith("--") and not re.match(r"^--?\d", nxt)):
            raise ConfigError(f"--{key} needs a value")
        else:
            pairs.append((key, nxt))
            i += 2
    return pairs


def _type_name(annotation: Any) -> str:
    """``int``, ``str | None``, ``bool | 'auto'``: a field's type as ``--help`` shows it."""
    if typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def format_help(config_types: tuple[type, ...], prog: str = "alignment") -> str:
    lines = [f"usage: {prog} [--config recipe.yaml] [--key value ...]", ""]
    for cls in config_types:
        lines.append(f"{section_name(cls)}:")
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            type_name = _type_name(hints[f.name])
            lines.append(f"  --{f.name} ({type_name}, default {default!r})")
            if f.metadata.get("help"):
                lines.append(f"      {f.metadata['help']}")
        lines.append("")
    return "\n".join(lines)


def build_config(
    config_types: tuple[type, ...],
    values: dict[str, Any],
    where: dict[str, str] | None = None,
) -> Config:
    """Fill the dataclasses from flat ``values``; ``where[key]`` says where a key was written."""
    where = where or {}
    owners: dict[str, type] = {}
    derived: set[str] = set()
    for cls in config_types:
        for f in dataclasses.fields(cls):
            if not f.init:
                derived.add(f.name)
                continue
            if f.name in owners and owners[f.name] is not cls:
                raise ConfigError(f"key '{f.name}' is defined by both {owners[f.name].__name__} and {cls.__name__}")
            owners[f.name] = cls
    kwargs: dict[type, dict[str, Any]] = {cls: {} for cls in config_types}
    for key, value in values.items():
        location = where.get(key, "command line")
        if key in derived:
            raise ConfigError(f"{location}: '{key}' is computed from other settings and cannot be set")
        if key not in owners:
            close = difflib.get_close_matches(key, list(owners), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{location}: unknown key '{key}'{hint}")
        cls = owners[key]
        try:
            kwargs[cls][key] = _coerce(value, _field_types(cls)[key], key)
        except ConfigError as e:
            raise ConfigError(f"{location}: {e}") from None
    sections = {}
    for cls in config_types:
        try:
            sections[section_name(cls)] = cls(**kwargs[cls])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"invalid {section_name(cls)} settings: {e}") from None
    return Config(sections)


def split_config_arg(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every ``--config FILE`` (or ``--config=FILE``) out of ``argv``; returns (the FILEs in order, the rest).

    Several files layer: a later file's keys override an earlier one's (a stage or pipeline recipe,
    then a model-family recipe from ``configs/models/``), and command-line flags override them all.
    """
    rest, paths = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config needs a file")
            paths.append(argv[i + 1])
            i += 2
            continue
        if token.startswith("--config="):
            path = token.split("=", 1)[1]
            if not path:
                raise ConfigError("--config needs a file")
            paths.append(path)
        else:
            rest.append(token)
        i += 1
    return paths, rest


def bool_keys_of(config_types: tuple[type, ...]) -> set[str]:
    return {
        f.name for cls in config_types for f in dataclasses.fields(cls) if _takes_bool(_field_types(cls).get(f.name))
    }


def parse_overrides(argv: list[str], bool_keys: set[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / bare boolean ``--flag`` pairs as a dict (the command-line layer)."""
    return dict(_argv_to_pairs(argv, bool_keys))


def parse_config(config_types: tuple[type, ...], argv: list[str] | None = None, prog: str = "alignment") -> Config:
    """YAML values from each ``--config`` in turn, then command-line overrides; ``--help`` prints and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(format_help(config_types, prog) + "\n")
        raise SystemExit(0)
    config_paths, argv = split_config_arg(argv)
    flags = _argv_to_pairs(argv, bool_keys_of(config_types))
    return layered_config(config_types, config_paths, [(k, v, f"command line (--{k})") for k, v in flags])


def layered_config(
    config_types: tuple[type, ...], config_paths: list[str], overrides: list[tuple[str, Any, str]]
) -> Config:
    """The YAML files in order (a later file's keys win), then ``overrides`` as ``(key, value, where written)``.

    The one way a stage's config is assembled from files plus overrides: the command line passes its flags here,
    a sweep its grid point, and errors name the file and line, or the override's source, of the bad value.
    """
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for config_path in config_paths:
        data, lines = load_yaml(config_path)
        for key, value in data.items():
            values[key] = value
            where[key] = f"{config_path}:{lines.get(key, '?')}"
    for key, value, source in overrides:
        values[key] = value
        where[key] = source
    return build_config(config_types, values, where)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.flat(), sort_keys=False), encoding="utf-8")
