"""One self-contained HTML page for a change ticket: the timeline as inline SVG, check's tables, the
audit findings and the before -> after of the last renewal.

Pure: the functions take check's data (and the renewal read from kubecert's backups by the CLI)
and return the page as a string. The page loads nothing: no script, no stylesheet link, no image
source, no ``url()``: inline CSS and SVG only. Every string from a node (subjects, paths, finding
messages, node names) goes through :func:`esc`: a certificate's CN is chosen by whoever made it.
Each bar of the timeline is one ``<g data-cert=NAME data-node=NODE>``, so a test (or a reviewer)
can count them.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple

from .. import __version__
from ..inventory import CA_WARN, ERROR, Finding, Item, NodeReport
from . import timeline as T
from .text import kubeadm_date, residual_seconds, short_human_duration

if TYPE_CHECKING:
    from ..cluster.check import ClusterReport

VERDICT = {0: "OK", 1: "WARNING", 2: "CRITICAL"}


@dataclass(frozen=True)
class CertChange:
    """One certificate of a renewal, as kubecert recorded it (serials in hex, times RFC 3339)."""

    name: str
    path: str
    old_serial: Optional[str]
    new_serial: Optional[str]
    old_not_after: Optional[str]
    new_not_after: Optional[str]
    now_serial: Optional[str] = None  # what the node holds today (None: not in check's inventory)
    backup_serial: Optional[str] = None  # what the backup copy of the file holds (None: not readable)

    @property
    def in_effect(self) -> Optional[bool]:
        if self.now_serial is None or self.new_serial is None:
            return None
        return self.now_serial.upper() == self.new_serial.upper()


@dataclass(frozen=True)
class Renewal:
    """The last change kubecert made on the node (newest backup that is not a rollback)."""

    backup_id: str
    created: str
    action: str
    in_effect: bool  # False: rolled back since
    files: int  # files in the backup
    changes: Tuple[CertChange, ...]


def esc(value: object) -> str:
    """Text for HTML and SVG (element content and quoted attributes alike)."""
    return html.escape(str(value), quote=True)


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d0d0d0;padding:3px 7px;text-align:left;vertical-align:top}
td:nth-child(2){white-space:nowrap}th{background:#f0f0f0}td.mono,span.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
tr.st-warn td{background:#fff4d6}tr.st-crit td,tr.st-expired td,tr.st-missing td,tr.st-unreadable td{background:#fde2e2}
tr.st-not-yet-valid td{background:#f3e5f5}
.sev-error{color:#b71c1c;font-weight:bold}.sev-warning{color:#8a5a00;font-weight:bold}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:bold}
.v0{background:#2e7d32}.v1{background:#b26a00}.v2{background:#c62828}
svg{display:block;margin:8px 0 16px;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
svg .st-ok rect{fill:#43a047}svg .st-warn rect{fill:#f9a825}svg .st-crit rect{fill:#e53935}
svg .st-expired rect{fill:#ffcdd2;stroke:#c62828;stroke-dasharray:4 2}svg .st-not-yet-valid rect{fill:#ab47bc}
svg .st-expired text.info,svg .st-crit text.info,svg .st-missing text,svg .st-unreadable text{fill:#c62828;font-weight:bold}
svg .st-warn text.info{fill:#8a5a00;font-weight:bold}
svg .zone-crit{fill:#fde2e2}svg .zone-warn{fill:#fff4d6}svg .today{stroke:#1565c0;stroke-width:2}
svg .tick{stroke:#ddd}svg .node{font-weight:bold;font-family:system-ui,sans-serif}
.legend span{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
.muted{color:#666}
"""

# --- the timeline as SVG ---------------------------------------------------------------------------

WIDTH, LABEL_W, INFO_W, ROW_H, BAR_H, TOP = 1000, 230, 190, 20, 12, 34
PLOT_W = WIDTH - LABEL_W - INFO_W
_STEPS_MONTHS = (1, 3, 6, 12, 24, 60, 120, 240, 600)


def _x(scale: T.Scale, when: dt.datetime) -> float:
    return LABEL_W + max(0.0, min(1.0, scale.fraction(when))) * PLOT_W


def _ticks(scale: T.Scale) -> List[dt.datetime]:
    """Month-aligned ticks, at most 10 of them."""
    months = (scale.end.year - scale.start.year) * 12 + scale.end.month - scale.start.month
    step = next((s for s in _STEPS_MONTHS if months / s <= 10), _STEPS_MONTHS[-1])
    index = scale.start.year * 12 + scale.start.month  # the first month boundary after the start
    index += -index % step
    out: List[dt.datetime] = []
    while True:
        year, month = divmod(index, 12)
        when = dt.datetime(year, month + 1, 1, tzinfo=dt.timezone.utc)
        if when > scale.end:
            return out
        out.append(when)
        index += step


def svg_section(section: T.Section, now: dt.datetime) -> str:
    """One section of the timeline (certificates or CAs) as an inline SVG element."""
    rows: List[Tuple[str, Optional[T.Bar]]] = []
    node = None
    for b in section.bars:
        if b.node and b.node != node:
            node = b.node
            rows.append((node, None))
        rows.append((b.name, b))
    height = TOP + ROW_H * len(rows) + 8
    s = section.scale
    out = [f'<svg width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{esc(section.title.lower())} timeline">']
    zone_x = [_x(s, now), _x(s, now + section.crit), _x(s, now + section.warn)]
    out.append(f'<rect class="zone-crit" x="{zone_x[0]:.1f}" y="{TOP - 6}" width="{zone_x[1] - zone_x[0]:.1f}" '
               f'height="{height - TOP}"/>')
    out.append(f'<rect class="zone-warn" x="{zone_x[1]:.1f}" y="{TOP - 6}" width="{zone_x[2] - zone_x[1]:.1f}" '
               f'height="{height - TOP}"/>')
    for t in _ticks(s):
        x = _x(s, t)
        label = f"{t:%Y}" if s.end - s.start > dt.timedelta(days=5 * 365) else f"{t:%Y-%m}"
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{TOP - 14}" x2="{x:.1f}" y2="{height}"/>'
                   f'<text x="{x:.1f}" y="{TOP - 18}" text-anchor="middle" class="muted">{esc(label)}</text>')
    for i, (label, bar) in enumerate(rows):
        y = TOP + i * ROW_H
        if bar is None:
            out.append(f'<text class="node" x="4" y="{y + 14}">{esc(label)}</text>')
            continue
        out.append(_svg_bar(s, bar, now, y, indent=bool(bar.node)))
    x = _x(s, now)
    out.append(f'<line class="today" x1="{x:.1f}" y1="{TOP - 12}" x2="{x:.1f}" y2="{height}"/>'
               f'<text x="{x + 3:.1f}" y="{TOP - 4}" fill="#1565c0">today {now:%Y-%m-%d}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _svg_bar(s: T.Scale, bar: T.Bar, now: dt.datetime, y: int, indent: bool) -> str:
    tip = f"{bar.node + ': ' if bar.node else ''}{bar.name} ({bar.path}): " + (
        f"{bar.not_before:%Y-%m-%d %H:%M} .. {bar.not_after:%Y-%m-%d %H:%M} UTC"
        if bar.not_before is not None and bar.not_after is not None else T.STATE_LABEL.get(bar.state, bar.state))
    parts = [f'<g class="bar st-{esc(bar.state)}" data-cert="{esc(bar.name)}" data-node="{esc(bar.node)}" '
             f'data-state="{esc(bar.state)}"><title>{esc(tip)}</title>',
             f'<text x="{18 if indent else 4}" y="{y + 14}">{esc(bar.name)}</text>']
    if bar.not_after is not None:
        start = s.start if bar.not_before is None else max(bar.not_before, s.start)
        x0, x1 = _x(s, start), _x(s, bar.not_after)
        if x1 - x0 < 2:  # entirely before the scale (or a blink): still one visible mark
            x0 = max(LABEL_W, x1 - 2)
        parts.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(2.0, x1 - x0):.1f}" height="{BAR_H}" rx="2"/>')
    parts.append(f'<text class="info" x="{LABEL_W + PLOT_W + 8}" y="{y + 14}">{esc(bar.label(now))}</text></g>')
    return "".join(parts)


def svg_timeline(tl: T.Timeline) -> str:
    out = []
    for section in tl.sections:
        if section.bars:
            out.append(f"<h3>{esc(section.title.capitalize())} "
                       f'<span class="muted">(crit zone {esc(_d(section.crit))}, warn zone {esc(_d(section.warn))}; '
                       f"scale {section.scale.start:%Y-%m-%d} .. {section.scale.end:%Y-%m-%d})</span></h3>")
            out.append(svg_section(section, tl.now))
    out.append('<p class="legend muted"><span style="background:#43a047"></span>valid'
               '<span style="background:#f9a825"></span>within warn<span style="background:#e53935"></span>within crit'
               '<span style="background:#ffcdd2;border:1px dashed #c62828"></span>expired'
               '<span style="background:#1565c0;width:2px"></span>today</p>')
    return "\n".join(out)


def _d(delta: dt.timedelta) -> str:
    return short_human_duration(int(delta.total_seconds()))


# --- tables ----------------------------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Iterable[Tuple[str, Sequence[str]]], mono: Sequence[int] = ()) -> str:
    """``rows``: (tr class, already-escaped cells)."""
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for cls, cells in rows:
        tds = "".join(f'<td class="mono">{c}</td>' if j in mono else f"<td>{c}</td>" for j, c in enumerate(cells))
        out.append(f'<tr class="{esc(cls)}">{tds}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _items_table(items: Sequence[Item], now: dt.datetime, warn: dt.timedelta, crit: dt.timedelta,
                 first: str) -> str:
    rows = []
    for i in items:
        st = T.state(i, now, warn, crit)
        if i.not_after is None:
            expires, left = T.STATE_LABEL.get(st, st), "-"
        else:
            expires, left = kubeadm_date(i.not_after), short_human_duration(residual_seconds(i.not_after, now))
        rows.append((f"st-{st}", [esc(i.name), esc(expires), esc(left), esc(i.ca_name or "-"),
                                  "yes" if i.externally_managed else "no",
                                  esc("-" if i.serial is None else format(i.serial, "X")),
                                  esc("-" if i.not_before is None else f"{i.not_before:%Y-%m-%d %H:%M}"),
                                  esc(i.subject or "-"), esc(i.cert_source or i.path),
                                  esc(i.error or ("missing" if i.missing else ""))]))
    return _table([first, "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY", "EXTERNALLY MANAGED", "SERIAL",
                   "NOT BEFORE (UTC)", "SUBJECT", "FILE", "PROBLEM"], rows, mono=(5, 7, 8))


def node_tables(report: NodeReport, warn: dt.timedelta, crit: dt.timedelta, ca_warn: dt.timedelta) -> str:
    """check's three tables: kubeadm's certificates and CAs, kubecert's extra rows."""
    now = report.now
    ca_zone = max(warn, ca_warn)
    out = []
    if report.kubeadm_certificates:
        out.append(_items_table(report.kubeadm_certificates, now, warn, crit, "CERTIFICATE"))
    if report.kubeadm_authorities:
        out.append(_items_table(report.kubeadm_authorities, now, ca_zone, crit, "CERTIFICATE AUTHORITY"))
    extras = [i for i in report.extras if not i.entry.is_ca]
    extra_cas = [i for i in report.extras if i.entry.is_ca]
    if extras:
        out.append(_items_table(extras, now, warn, crit, "KUBECERT EXTRA"))
    if extra_cas:
        out.append(_items_table(extra_cas, now, ca_zone, crit, "KUBECERT EXTRA CA"))
    return "\n".join(out)


def findings_table(findings: Sequence[Finding], node_column: bool = False) -> str:
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings:
        sev = f"<span class=\"sev-{esc(f.severity)}\">{esc(f.severity.upper())}</span>"
        cells = [sev, esc(f.code), esc(f.name or "-"), esc(f.path or "-"), esc(f.message), esc(f.fix)]
        rows.append(("st-crit" if f.severity == ERROR else "st-warn", cells))
    return _table(["SEVERITY", "CODE", "NODE" if node_column else "NAME", "FILE", "FINDING", "FIX"], rows, mono=(3,))


def renewal_section(renewal: Optional[Renewal]) -> str:
    if renewal is None:
        return "<h2>Last renewal</h2>\n<p>No renewal recorded in this node's kubecert backups.</p>"
    state = "in effect" if renewal.in_effect else "rolled back since"
    out = [f'<h2 id="renewal">Last renewal: {esc(renewal.action)} {esc(renewal.backup_id)}</h2>',
           f"<p>{esc(renewal.created)}, {renewal.files} file(s) backed up, {esc(state)}; undo with "
           f'<span class="mono">kubecert rollback {esc(renewal.backup_id)}</span>.</p>']
    if not renewal.changes:
        out.append("<p>No per-certificate record of this change in the audit log.</p>")
        return "\n".join(out)
    rows = []
    for c in renewal.changes:
        effect = {True: "yes", False: "no: changed since", None: "-"}[c.in_effect]
        backup = ("-" if c.backup_serial is None else
                  "matches" if c.old_serial and c.backup_serial.upper() == c.old_serial.upper() else
                  f"differs: {c.backup_serial}")
        cls = "" if c.in_effect is not False and backup in ("-", "matches") else "st-warn"
        rows.append((cls, [esc(c.name), esc(c.old_serial or "-"), esc(c.new_serial or "-"),
                           esc(c.old_not_after or "-"), esc(c.new_not_after or "-"), esc(effect), esc(backup),
                           esc(c.path)]))
    out.append(_table(["CERTIFICATE", "SERIAL BEFORE", "SERIAL AFTER", "NOT AFTER BEFORE", "NOT AFTER AFTER",
                       "ON THE NODE NOW", "BACKUP COPY", "FILE"], rows, mono=(1, 2, 7)))
    return "\n".join(out)


# --- pages -----------------------------------------------------------------------------------------

def _page(title: str, body: Sequence[str], now: dt.datetime) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", *body,
        f'<p class="muted">Written by kubecert {esc(__version__)} at {now:%Y-%m-%d %H:%M:%S} UTC; '
        "self-contained: this page loads nothing.</p>", "</body>", "</html>", ""])


def _verdict(code: int) -> str:
    return f'<span class="verdict v{min(code, 2)}">{esc(VERDICT.get(code, str(code)))} (exit {code})</span>'


def render_node(report: NodeReport, *, warn: dt.timedelta, crit: dt.timedelta, exit_code: int,
                ca_warn: dt.timedelta = CA_WARN, renewal: Optional[Renewal] = None) -> str:
    """The node page: summary, timeline, tables, audit, last renewal."""
    now = report.now
    who = report.facts.node_name or report.root
    tl = T.node_timeline(report, warn=warn, crit=crit, ca_warn=ca_warn)
    body = [f"<h1>kubecert report: {esc(who)}</h1>",
            _table(["NODE", "ROOT", "PROFILE", "CHECKED AT (UTC)", "THRESHOLDS", "STATUS"],
                   [("", [esc(report.facts.node_name or "-"), esc(report.root),
                          esc(f"{report.profile.name} ({report.profile.reason})"), esc(f"{now:%Y-%m-%d %H:%M:%S}"),
                          esc(f"warn {_d(warn)}, crit {_d(crit)}, CA warn {_d(ca_warn)}"), _verdict(exit_code)])]),
            "<h2>Timeline</h2>", svg_timeline(tl),
            "<h2>Certificates</h2>", node_tables(report, warn, crit, ca_warn),
            "<h2>Audit</h2>", findings_table(report.findings), renewal_section(renewal)]
    return _page(f"kubecert report: {who}", body, now)


def render_cluster(report: ClusterReport, *, warn: dt.timedelta, crit: dt.timedelta, exit_code: int,
                   ca_warn: dt.timedelta = CA_WARN) -> str:
    """The cluster page: nodes, one timeline for all of them, cross-node audit, each node's tables."""
    now = report.now
    tl = T.cluster_timeline(report, warn=warn, crit=crit, ca_warn=ca_warn)
    rows = []
    for n in report.nodes:
        if n.report is None:
            rows.append(("st-crit", [esc(n.name), esc(n.address), esc(n.role), "-", "-", esc(f"unreachable: {n.error}")]))
            continue
        errors = sum(f.severity == ERROR for f in n.report.findings)
        code = n.report.exit_code(warn, crit)
        rows.append(({0: "", 1: "st-warn"}.get(code, "st-crit"),
                     [esc(n.name), esc(n.address), esc(n.role), esc(n.report.profile.name),
                      esc(f"{errors} error(s), {len(n.report.findings) - errors} warning(s)"), _verdict(code)]))
    body = [f"<h1>kubecert cluster report ({len(report.nodes)} nodes)</h1>",
            f"<p>Checked at {now:%Y-%m-%d %H:%M:%S} UTC; warn {esc(_d(warn))}, crit {esc(_d(crit))}; "
            f"status {_verdict(exit_code)}</p>",
            _table(["NODE", "ADDRESS", "ROLE", "PROFILE", "FINDINGS", "STATUS"], rows),
            "<h2>Timeline</h2>", svg_timeline(tl),
            "<h2>Cross-node audit</h2>", findings_table(report.findings, node_column=True), "<h2>Nodes</h2>"]
    for n in report.nodes:
        if n.report is None:
            continue
        body += [f"<details><summary><b>{esc(n.name)}</b> ({esc(n.address)}, {esc(n.report.profile.name)})</summary>",
                 node_tables(n.report, warn, crit, ca_warn), "<h3>Audit</h3>", findings_table(n.report.findings),
                 "</details>"]
    return _page(f"kubecert cluster report ({len(report.nodes)} nodes)", body, now)
