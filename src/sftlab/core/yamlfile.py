"""YAML as configs need it: each key's line (for messages that point at it), duplicate keys
reported instead of silently dropped, and `1e-4` read as a number."""

from __future__ import annotations

import re
from typing import Any

import yaml


def key_lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each key path (('train', 'lr'), ('data', 'sources', 0, 'path')) to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, key_node.value)
            out[key_path] = key_node.start_mark.line + 1
            key_lines(value_node, key_path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            key_lines(item, (*path, i), out)
    return out


def duplicate_keys(node: yaml.Node, source: str, path: tuple = ()) -> list[str]:
    """YAML keeps the last of two equal keys without a word; report each repeat instead."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict = {}
        for key_node, value_node in node.value:
            key_path, line = (*path, key_node.value), key_node.start_mark.line + 1
            if key_node.value in first_line:
                problems.append(
                    f"{source}:{line}: {'.'.join(map(str, key_path))}: duplicate key "
                    f"(first at line {first_line[key_node.value]}; YAML would keep only the last)"
                )
            first_line.setdefault(key_node.value, line)
            problems += duplicate_keys(value_node, source, key_path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, source, (*path, i))
    return problems


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; learning rates are written that way."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
