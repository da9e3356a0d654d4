"""YAML values onto typed dataclasses, for the run config (``trainer.config``): each value coerced to its field's
type, unknown sections and keys named with their closest match, problems placed at their file line.

Problems are collected (appended to a list), never raised one at a time, so a user sees all of them at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import yaml


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ValueError with a short reason."""
    args = typing.get_args(tp)
    if type(None) in args:  # "X | None"
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        return coerce(value, next(a for a in args if a is not type(None)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        items = value if isinstance(value, list) else [value]
        return [_coerce_item(item, typing.get_args(tp)[0]) for item in items]
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return list(value)
    raise TypeError(f"unsupported config type {tp}")


def _coerce_item(value: Any, cls: type) -> Any:
    """One entry of a list of dataclasses (``data.sources``): a mapping of its keys, or a path string."""
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping like {{path: ..., kind: ...}}, got {value!r}")
    hints = typing.get_type_hints(cls)
    unknown = [k for k in value if k not in hints]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(hints)})")
    return cls(**{k: coerce(v, hints[k]) for k, v in value.items()})


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text)
    except yaml.YAMLError:
        return None


def key_lines(text: str) -> dict[str, int]:
    """``"section"`` / ``"section.key"`` -> 1-based line in the YAML text, for error messages."""
    lines: dict[str, int] = {}
    root = _compose(text)
    if isinstance(root, yaml.MappingNode):
        for sec_node, body in root.value:
            lines[str(sec_node.value)] = sec_node.start_mark.line + 1
            if isinstance(body, yaml.MappingNode):
                for key_node, _ in body.value:
                    lines[f"{sec_node.value}.{key_node.value}"] = key_node.start_mark.line + 1
    return lines


def repeated_keys(text: str, where: str) -> list[str]:
    """A problem for each key given twice in one mapping (two ``train:`` sections, ``lr`` twice in one), at its
    line: YAML keeps the last one silently, so a value the user reads in the file may not be the one that runs."""
    problems: list[str] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value in node.value:
                name, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
                if name in first:
                    problems.append(f"{where}:{line}: {name}: given again (first at line {first[name]}); keep one")
                first.setdefault(name, line)
                walk(value, f"{name}.")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix.removesuffix('.')}[{i}].")

    root = _compose(text)
    if root is not None:
        walk(root, "")
    return problems


def _place(where: str, lines: dict[str, int], key: str) -> str:
    """``where:line`` of ``key`` ("section" or "section.key") when the file's lines are known, else ``where``."""
    return f"{where}:{lines[key]}" if key in lines else where


def _merge_section(obj: Any, section: str, values: Any, where: str, lines: dict[str, int], problems: list[str]) -> None:
    at = _place(where, lines, section)
    if not isinstance(values, dict):
        problems.append(f"{at}: {section}: expected a mapping of keys, got {values!r}")
        return
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        name = f"{section}.{key}"
        at = _place(where, lines, name)
        if key not in hints:
            close = difflib.get_close_matches(str(key), hints, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(hints)})"
            problems.append(f"{at}: {name}: unknown key{hint}")
            continue
        try:
            setattr(obj, key, coerce(value, hints[key]))
        except ValueError as err:
            problems.append(f"{at}: {name}: {err}")


def apply_tree(cfg: Any, tree: Any, where: str, problems: list[str], lines: dict[str, int] | None = None) -> None:
    """Set the fields of ``cfg`` (a dataclass of section dataclasses) from a ``{section: {key: value}}`` tree; every
    problem (unknown section or key, with a close match; a value of the wrong type) goes to ``problems``."""
    lines = lines or {}
    sections = [f.name for f in dataclasses.fields(cfg)]
    if tree is None:
        return
    if not isinstance(tree, dict):
        problems.append(f"{where}: expected sections {', '.join(sections)} at the top level")
        return
    for section, values in tree.items():
        if section not in sections:
            close = difflib.get_close_matches(str(section), sections, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (sections: {', '.join(sections)})"
            at = _place(where, lines, section)
            problems.append(f"{at}: {section}: unknown section{hint}")
            continue
        _merge_section(getattr(cfg, section), section, values, where, lines, problems)


def parse_override(text: str) -> tuple[str, str, Any] | str:
    """``section.key=value`` -> (section, key, YAML-parsed value), or a problem string."""
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not key:
        return f"override {text!r}: expected section.key=value, e.g. train.max_steps=100"
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        if raw.strip().startswith(("[", "{")):  # meant as a list / mapping: as one string it would be taken silently
            return (f"override {text!r}: not a YAML list or mapping ({getattr(err, 'problem', err)}); quote items "
                    "with ':', '?', ',' or '#' in them, e.g. data.eval_prompts='[\"Who are you?\", 你是谁]'")
        value = raw  # a plain string YAML cannot read as one (e.g. a prompt with ': ' in it)
    return section, key, value
