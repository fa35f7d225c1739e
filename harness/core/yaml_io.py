"""Reading YAML the strict way: a duplicate key or a syntax error names the file and line.

PyYAML keeps the last of two equal keys silently, which would drop a transcribed paper
number or a config value without a trace; every YAML the harness reads (configs, table
specs, sweep spaces, `--set` values, its own prompt files) goes through `parse_yaml`.

Anchors and aliases are allowed, but what they expand to is bounded: a few lines of nested
aliases ("billion laughs") expand to gigabytes once a config is hashed, dumped or logged,
so a document whose expanded size passes `MAX_EXPANDED` (or whose alias contains itself) is
refused at load, naming the file and the line of the alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import ConfigError, shorten
from harness.core.io import binary_kind

MAX_EXPANDED = 1_000_000  # characters (and nodes) a document may expand to through its aliases


class _AliasBomb(Exception):
    def __init__(self, mark: yaml.Mark | None, why: str) -> None:
        super().__init__(why)
        self.mark = mark
        self.why = why


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, and aliases that expand too far."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases = True
        return super().compose_node(parent, index)

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None and getattr(self, "_aliases", False):
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Raise _AliasBomb when the document's aliases expand past MAX_EXPANDED or loop, with
    the line of the first (innermost) value that expands too far.
    Sizes are computed once per node (shared nodes are counted at each use, which is what
    expanding does), so the check costs one pass over the nodes as written."""
    size: dict[int, int] = {}
    open_: set[int] = set()

    def weigh(node: yaml.Node) -> int:
        key = id(node)
        if key in size:
            return size[key]
        if key in open_:
            raise _AliasBomb(node.start_mark, "an alias that contains itself")
        open_.add(key)
        if isinstance(node, yaml.ScalarNode):
            total = 1 + len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(weigh(n) for n in node.value)
        else:
            total = 1 + sum(weigh(k) + weigh(v) for k, v in node.value)
        open_.discard(key)
        if total > MAX_EXPANDED:
            raise _AliasBomb(node.start_mark, f"aliases expand this value to more than {MAX_EXPANDED:,} characters")
        size[key] = total
        return total

    weigh(root)


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: let the normal constructor report it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> data; errors name `where` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _AliasBomb as e:
        line = f":{e.mark.line + 1}" if e.mark is not None else ""
        raise ConfigError(f"{where}{line}: refused: {e.why} (YAML anchors and aliases "
                          "are allowed only for values of a sane size)") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: invalid YAML ({shorten(str(e.problem or e))})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML ({shorten(str(e))})") from None
    except RecursionError:
        raise ConfigError(f"{where}: refused: a value nested thousands of levels deep") from None


def load_yaml(path: Path) -> Any:
    """A YAML file -> data; a missing, unreadable or invalid file is a ConfigError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        kind = binary_kind(data)
        raise ConfigError(f"{path}: " + (f"the file is {kind}; expected YAML text" if kind else
                                         f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}; expected utf-8)")) from None
    return parse_yaml(text, str(path))
