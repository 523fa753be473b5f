"""Bounded YAML: every YAML file kubecert reads goes through :func:`load` / :func:`load_all`.

A node's kubeconfigs, kubeadm config, static pod manifests, kubelet config and an operator's
inventories are parsed by root; a broken or hostile one must cost an error, not minutes and
gigabytes. Limits (documented in the README's Safety section):

* :data:`MAX_BYTES` per file (the largest kubeadm-written file is a few KiB);
* :data:`MAX_NODES` values in one document, counting every use of an alias (PyYAML shares the
  object an alias names, so a "billion laughs" file is small in memory but enormous to walk);
* :data:`MAX_DEPTH` levels of nesting (libyaml's composer recurses per level: deeper would crash it);
* nesting deeper than Python's recursion limit, bad dates and other constructor errors become the
  same one-line error.
"""

from __future__ import annotations

from typing import Any, List, Type

import yaml

from .errors import ConfigError, KubecertError

try:  # the C loader is ten times faster; fall back where libyaml is absent
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

MAX_BYTES = 1 << 20
MAX_NODES = 200_000
MAX_DEPTH = 512  # nesting of collections (sequences and mappings)


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def _check_size(data: bytes, source: str, error: Type[KubecertError]) -> None:
    if len(data) > MAX_BYTES:
        raise error(f"{source}: {len(data)} bytes, more than the {MAX_BYTES} a YAML file may have here; "
                    "not a kubeadm or kubelet file?")


def bounded(doc: Any, source: str, error: Type[KubecertError] = ConfigError) -> Any:
    """``doc`` itself, after checking that walking it visits at most :data:`MAX_NODES` values."""
    seen = 0
    stack: List[Any] = [doc]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise error(f"{source}: more than {MAX_NODES} values (YAML aliases expanding?); refusing to read it")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return doc


def _check_depth(data: bytes, source: str, error: Type[KubecertError]) -> None:
    """Collections nested deeper than :data:`MAX_DEPTH` are refused before they are composed: the
    composer recurses once per level and a deep enough file overflows libyaml's C stack (a segfault,
    not an error). The event stream is produced iteratively, so walking it is safe, and the walk
    stops at the first level too deep."""
    starts = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
    ends = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    depth = 0
    try:
        for event in yaml.parse(data, Loader=_Loader):
            if isinstance(event, starts):
                depth += 1
                if depth > MAX_DEPTH:
                    raise error(f"{source}: YAML nested deeper than {MAX_DEPTH} levels; refusing to read it")
            elif isinstance(event, ends):
                depth -= 1
    except yaml.YAMLError:
        return  # not valid YAML: the load itself says where


def load(data: bytes, source: str, error: Type[KubecertError] = ConfigError) -> Any:
    """One YAML document, bounded; ``error`` is the exception class for the one-line message."""
    _check_size(data, source, error)
    _check_depth(data, source, error)
    try:
        doc = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML{_where(exc)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeError) as exc:
        raise error(f"{source}: unreadable YAML ({type(exc).__name__})") from None
    return bounded(doc, source, error)


def load_all(data: bytes, source: str, error: Type[KubecertError] = ConfigError) -> List[Any]:
    """Every document of a multi-document file, bounded together."""
    _check_size(data, source, error)
    _check_depth(data, source, error)
    try:
        docs = list(yaml.load_all(data, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML{_where(exc)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeError) as exc:
        raise error(f"{source}: unreadable YAML ({type(exc).__name__})") from None
    bounded(docs, source, error)
    return docs
