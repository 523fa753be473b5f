"""Metric families as data, and their two renderings: Prometheus text and prometheus_client objects.

A scrape of 10,000 certificate files is 30,000 samples; prometheus_client's ``generate_latest`` takes
about 0.3 s to format that many here, more than the whole warm-scrape budget (0.2 s). So each
certificate's label set is rendered once, when its file is read (:mod:`.files`), and
:func:`render_text` only joins those strings with the values of this scrape. :class:`FamiliesCollector`
gives the same families to a prometheus_client registry (for embedding, and to test that both
renderings agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Tuple

from .files import render_labels

# the classic text format: every Prometheus since 2.0 reads it (prometheus_client >= 0.22 announces 1.0.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Tuple[Tuple[str, str], ...]


@dataclass
class Family:
    name: str
    help: str
    type: str = "gauge"
    # (rendered labels, labels, value, the value rendered or "" to render it)
    samples: List[Tuple[str, Labels, float, str]] = field(default_factory=list)

    def add(self, labels: Labels, value: float) -> None:
        self.samples.append((render_labels(labels), labels, value, ""))


def fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_text(families: Iterable[Family]) -> str:
    """The text exposition format (version 0.0.4)."""
    out: List[str] = []
    for f in families:
        if not f.samples:
            continue
        out.append(f"# HELP {f.name} {_help(f.help)}\n# TYPE {f.name} {f.type}\n")
        name = f.name
        out.extend(f"{name}{text} {vs or fmt(v)}\n" for text, _, v, vs in f.samples)
    return "".join(out)


class FamiliesCollector:
    """A prometheus_client collector (``registry.register(...)``) over a function returning families."""

    def __init__(self, produce: Callable[[], List[Family]]) -> None:
        self.produce = produce

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import Metric

        for f in self.produce():
            if not f.samples:
                continue
            m = Metric(f.name, f.help, f.type)
            for _, labels, value, _ in f.samples:
                m.add_sample(f.name, dict(labels), value)
            yield m
