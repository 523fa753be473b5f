"""The expiry timeline: one bar per certificate up to its NotAfter, today marked, warn/crit zones.

Data first: :func:`build` turns check's reports (one node, or every node of ``cluster check``) into
a :class:`Timeline` — two sections, certificates and CAs, each on its own time scale (a CA lives ten
years, a leaf one) — and the renderers draw it: :func:`render_text` as rich text lines for a
terminal, :mod:`kubecert.report.html` as SVG. Nothing here reads files, prints or reads the clock:
``now`` comes with the reports.

The text chart is readable without colour (``NO_COLOR``, a pipe): glyphs carry the zones and the
states (``█`` valid, ``░`` expired, ``│`` today, ``!``/``~`` the crit/warn zones), and every row ends
with its NotAfter and a label (``WARN 20d``, ``CRIT 3d``, ``EXPIRED``).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from .. import spec
from ..inventory import CA_WARN, Item, NodeReport
from .text import residual_seconds, short_human_duration

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

    from ..cluster.check import ClusterReport

OK, WARN, CRIT, EXPIRED, FUTURE = "ok", "warn", "crit", "expired", "not-yet-valid"
MISSING, UNREADABLE, NEVER = "missing", "unreadable", "never"
# the label a row ends with, for states that are not fine (the colour only repeats it)
STATE_LABEL = {WARN: "WARN", CRIT: "CRIT", EXPIRED: "EXPIRED", FUTURE: "NOT YET VALID",
               MISSING: "!MISSING!", UNREADABLE: "!UNREADABLE!", NEVER: "never expires"}
STATE_STYLE = {OK: "green", WARN: "yellow", CRIT: "bold red", EXPIRED: "bold red", FUTURE: "magenta",
               MISSING: "bold red", UNREADABLE: "bold red", NEVER: "cyan"}
MAX_AHEAD = dt.timedelta(days=50 * 365)  # a NotAfter of 9999-12-31 must not squash every other bar
PAD = 0.03  # of a scale's span, on both sides: the today line never sits on the edge


@dataclass(frozen=True)
class Bar:
    """One certificate (or the sa key pair) of one node."""

    node: str  # "" on a single node
    name: str
    kind: str  # spec.Kind value
    ca: str
    path: str
    not_before: Optional[dt.datetime]
    not_after: Optional[dt.datetime]
    state: str

    def label(self, now: dt.datetime) -> str:
        """What the row ends with: NotAfter and time left, or the state."""
        if self.not_after is None:
            return STATE_LABEL[self.state]
        left = short_human_duration(residual_seconds(self.not_after, now))
        date = f"{self.not_after:%Y-%m-%d}"
        if self.state in (OK, NEVER):
            return f"{date} {left}"
        if self.state in (WARN, CRIT):
            return f"{date} {STATE_LABEL[self.state]} {left}"
        return f"{date} {STATE_LABEL[self.state]}"


@dataclass(frozen=True)
class Scale:
    start: dt.datetime
    end: dt.datetime

    def fraction(self, when: dt.datetime) -> float:
        """Where ``when`` falls: 0 at the start, 1 at the end (outside 0..1 beyond them)."""
        return (when - self.start) / (self.end - self.start)


@dataclass(frozen=True)
class Section:
    title: str
    is_ca: bool
    scale: Scale
    warn: dt.timedelta  # the warn zone: now .. now + warn (for CAs: --ca-warn when longer)
    crit: dt.timedelta  # the crit zone: now .. now + crit
    bars: Tuple[Bar, ...]


@dataclass(frozen=True)
class Timeline:
    now: dt.datetime
    sections: Tuple[Section, ...]
    nodes: Tuple[str, ...] = ()  # cluster: node names in order ("" on a single node)
    unreachable: Tuple[Tuple[str, str], ...] = ()  # cluster: (node, error)

    @property
    def bars(self) -> Tuple[Bar, ...]:
        return tuple(b for s in self.sections for b in s.bars)


def state(item: Item, now: dt.datetime, warn: dt.timedelta, crit: dt.timedelta) -> str:
    """The bar's state, with check's thresholds (``warn`` is already --ca-warn for a CA)."""
    if item.missing:
        return MISSING
    if item.error or (item.not_after is None and item.entry.kind is not spec.Kind.KEYPAIR):
        return UNREADABLE
    if item.not_after is None:
        return NEVER
    left = item.not_after - now
    if left <= dt.timedelta(0):
        return EXPIRED
    if item.not_before is not None and item.not_before > now:
        return FUTURE
    if left <= crit:
        return CRIT
    return WARN if left <= warn else OK


def _bar(node: str, i: Item, now: dt.datetime, warn: dt.timedelta, crit: dt.timedelta) -> Bar:
    return Bar(node, i.name, i.entry.kind.value, i.ca_name, i.cert_source or i.path, i.not_before, i.not_after,
               state(i, now, warn, crit))


def _ordered(report: NodeReport) -> Tuple[List[Item], List[Item]]:
    """check's row order: kubeadm's certificates, kubecert's extras; kubeadm's CAs, extra CAs."""
    extras = list(report.extras)
    leaves = list(report.kubeadm_certificates) + [i for i in extras if not i.entry.is_ca]
    cas = list(report.kubeadm_authorities) + [i for i in extras if i.entry.is_ca]
    return leaves, cas


def _scale(bars: Sequence[Bar], now: dt.datetime, warn: dt.timedelta) -> Scale:
    ends = [b.not_after for b in bars if b.not_after is not None]
    starts = [b.not_before for b in bars if b.not_before is not None]
    end = min(max([now + warn, *ends]), now + MAX_AHEAD)
    start = min([now, *starts])
    # the past matters only as far as the future shown: today stays at or right of the middle
    start = max(start, now - max(end - now, warn))
    pad = (end - start) * PAD
    return Scale(start - pad, end + pad)


def build(nodes: Sequence[Tuple[str, NodeReport]], *, now: dt.datetime, warn: dt.timedelta,
          crit: dt.timedelta, ca_warn: dt.timedelta = CA_WARN,
          unreachable: Sequence[Tuple[str, str]] = ()) -> Timeline:
    """The timeline of one node (``[("", report)]``) or of many (one scale per section for all)."""
    ca_zone = max(warn, ca_warn)
    leaves: List[Bar] = []
    cas: List[Bar] = []
    for node, report in nodes:
        node_leaves, node_cas = _ordered(report)
        leaves += [_bar(node, i, now, warn, crit) for i in node_leaves]
        cas += [_bar(node, i, now, ca_zone, crit) for i in node_cas]
    sections = (Section("CERTIFICATES", False, _scale(leaves, now, warn), warn, crit, tuple(leaves)),
                Section("CERTIFICATE AUTHORITIES", True, _scale(cas, now, ca_zone), ca_zone, crit, tuple(cas)))
    return Timeline(now, sections, tuple(n for n, _ in nodes), tuple(unreachable))


def node_timeline(report: NodeReport, *, warn: dt.timedelta, crit: dt.timedelta,
                  ca_warn: dt.timedelta = CA_WARN) -> Timeline:
    return build([("", report)], now=report.now, warn=warn, crit=crit, ca_warn=ca_warn)


def cluster_timeline(report: ClusterReport, *, warn: dt.timedelta, crit: dt.timedelta,
                     ca_warn: dt.timedelta = CA_WARN) -> Timeline:
    """Every reachable node of ``cluster check`` on shared scales; unreachable nodes are listed."""
    return build([(n.name, n.report) for n in report.nodes if n.report is not None], now=report.now,
                 warn=warn, crit=crit, ca_warn=ca_warn,
                 unreachable=[(n.name, n.error or "no report") for n in report.nodes if n.report is None])


# --- text ------------------------------------------------------------------------------------------

ZONE_CRIT, ZONE_WARN, ZONE_NONE = "!", "~", "·"
MIN_BAR = 10


def _duration(d: dt.timedelta) -> str:
    return short_human_duration(int(d.total_seconds()))


class _Grid:
    """Columns of one section's chart: which cell holds today, which cells are in which zone."""

    def __init__(self, section: Section, now: dt.datetime, width: int) -> None:
        self.scale = section.scale
        self.width = width
        self.today = self.col(now)
        crit_end, warn_end = self.col(now + section.crit), self.col(now + section.warn)
        self.zone = [ZONE_CRIT if self.today <= c <= max(crit_end, self.today) else
                     ZONE_WARN if c <= warn_end and c > self.today else ZONE_NONE for c in range(width)]

    def col(self, when: dt.datetime) -> int:
        return min(self.width - 1, max(0, int(self.scale.fraction(when) * self.width)))

    def span(self, bar: Bar) -> Tuple[int, int, bool, bool]:
        """First and last cell of a bar, and whether it runs off the left / right edge."""
        assert bar.not_after is not None
        lo = self.scale.start if bar.not_before is None else max(bar.not_before, self.scale.start)
        f_end = self.scale.fraction(bar.not_after)
        first = min(self.col(lo), self.col(bar.not_after))
        return first, self.col(bar.not_after), f_end < 0, f_end > 1


def _row(grid: _Grid, bar: Optional[Bar]) -> Text:
    """One bar's cells (``bar`` None: the ruler), consecutive cells of one style in one span."""
    from rich.text import Text

    cells: List[Tuple[str, str]] = []
    first, last, off_left, off_right = (grid.span(bar) if bar is not None and bar.not_after is not None
                                        else (-1, -2, False, False))
    for c in range(grid.width):
        zone = grid.zone[c]
        zone_style = "red" if zone == ZONE_CRIT else "yellow" if zone == ZONE_WARN else "dim"
        if bar is not None and first <= c <= last:
            glyph = "░" if bar.state == EXPIRED else "█"
            if off_left and c == 0:
                glyph = "◀"
            elif off_right and c == grid.width - 1:
                glyph = "▶"
            style = STATE_STYLE[bar.state]
            cells.append(("│", f"bold white on {style.split()[-1]}") if c == grid.today else (glyph, style))
        elif c == grid.today:
            cells.append(("│", "bold"))
        elif bar is None:  # the ruler: the zones spelled out
            cells.append(("─" if zone == ZONE_NONE else zone, zone_style))
        else:
            cells.append((" " if zone == ZONE_NONE else "·", zone_style))
    out = Text(no_wrap=True, overflow="crop")
    run, run_style = "", ""
    for glyph, style in cells:
        if style != run_style and run:
            out.append(run, style=run_style)
            run = ""
        run, run_style = run + glyph, style
    out.append(run, style=run_style)
    return out


def _fit(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[:width - 1] + "…"


def render_text(tl: Timeline, width: int = 80) -> RenderableType:
    """The chart as rich text lines for a terminal ``width`` columns wide (80 is enough)."""
    from rich.console import Group
    from rich.text import Text

    cluster = any(tl.nodes)
    indent = "  " if cluster else ""
    names = [indent + b.name for b in tl.bars] + ["zones !crit ~warn"]
    name_w = min(26, max(len(n) for n in names))
    info_w = min(26, max([len(b.label(tl.now)) for b in tl.bars] + [len("NotAfter")]))
    bar_w = max(MIN_BAR, width - name_w - info_w - 2)
    lines: List[Text] = []
    for unreachable, error in tl.unreachable:
        lines.append(Text(f"!UNREACHABLE! {unreachable}: {error}", style="bold red", no_wrap=True, overflow="ellipsis"))
    for section in tl.sections:
        if not section.bars:
            continue
        grid = _Grid(section, tl.now, bar_w)
        if lines:
            lines.append(Text(""))
        lines.append(Text(f"{section.title} (crit {_duration(section.crit)}, warn {_duration(section.warn)})",
                          style="bold", no_wrap=True, overflow="crop"))
        left, right = f"{section.scale.start:%Y-%m-%d}", f"{section.scale.end:%Y-%m-%d}"
        axis = left + right.rjust(bar_w - len(left)) if bar_w >= len(left) + len(right) + 1 else left.ljust(bar_w)
        lines.append(Text(" " * (name_w + 1) + axis + " " + "NotAfter", style="dim", no_wrap=True, overflow="crop"))
        ruler = Text(_fit(f"zones !{_duration(section.crit)} ~{_duration(section.warn)}", name_w) + " ",
                     no_wrap=True, overflow="crop")
        ruler.append_text(_row(grid, None))
        ruler.append(" │ today", style="bold")
        lines.append(ruler)
        node = None
        for b in section.bars:
            if cluster and b.node != node:
                node = b.node
                lines.append(Text(node, style="bold underline", no_wrap=True, overflow="crop"))
            style = "" if b.state in (OK, NEVER) else STATE_STYLE[b.state]
            row = Text(_fit(indent + b.name, name_w) + " ", style=style, no_wrap=True, overflow="crop")
            row.append_text(_row(grid, b))
            row.append(" " + b.label(tl.now), style=style)
            lines.append(row)
    lines.append(Text(""))
    lines.append(Text(f"│ today {tl.now:%Y-%m-%d %H:%M} UTC  █ valid  ░ expired  ◀ ▶ beyond the scale",
                      style="dim", no_wrap=True, overflow="crop"))
    return Group(*lines)


def as_text(renderable: RenderableType, width: int = 80, color: bool = False) -> str:
    """A renderable as the text a terminal ``width`` wide shows (ANSI colours only with ``color``)."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system="standard" if color else None, force_terminal=color,
            highlight=False, legacy_windows=False).print(renderable)
    return buf.getvalue()
