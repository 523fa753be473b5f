"""kubeadm ``certs check-expiration`` text layout, then kubecert's extra rows and the audit.

The tables reproduce Go's ``text/tabwriter`` with kubeadm's settings (minwidth 10, tabwidth 4,
padding 3, space padding), so the kubeadm rows are byte-for-byte what kubeadm prints.
"""

from __future__ import annotations

import datetime as dt
from typing import List, Optional, Sequence

from ..inventory import ERROR, Item, NodeReport

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def tabwrite(lines: Sequence[str], minwidth: int = 10, padding: int = 3) -> str:
    """Go text/tabwriter for lines whose tab-terminated cells line up (kubeadm's case)."""
    rows = [line.split("\t") for line in lines]
    ncols = max(len(r) for r in rows) - 1
    widths: List[int] = []
    for j in range(ncols):
        sizes = [len(r[j]) + padding for r in rows if j < len(r) - 1]
        widths.append(max([minwidth, *sizes]))
    out = []
    for r in rows:
        cells = [c.ljust(widths[j]) for j, c in enumerate(r[:-1])]
        out.append("".join(cells) + r[-1])
    return "\n".join(out) + "\n"


def kubeadm_date(when: dt.datetime) -> str:
    """Go's "Jan 02, 2006 15:04 MST" for a UTC time."""
    when = when.astimezone(dt.timezone.utc)
    return f"{_MONTHS[when.month - 1]} {when.day:02d}, {when.year} {when.hour:02d}:{when.minute:02d} UTC"


def residual_seconds(not_after: dt.datetime, now: dt.datetime) -> int:
    """kubeadm's ``int64(time.Until(expiry) / time.Second)``: truncated toward zero."""
    return int((not_after - now).total_seconds())


def short_human_duration(seconds: int) -> str:
    """k8s.io/apimachinery ``duration.ShortHumanDuration``."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 24:
        return f"{hours}h"
    if hours < 24 * 365:
        return f"{hours // 24}d"
    return f"{int(hours / 24 / 365)}y"


def _yes_no(b: bool) -> str:
    return f"{'yes' if b else 'no':<8}"


def _residual(item: Item, now: dt.datetime) -> str:
    assert item.not_after is not None
    return short_human_duration(residual_seconds(item.not_after, now))


def kubeadm_tables(report: NodeReport) -> str:
    now = report.now
    lines = ["CERTIFICATE\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tEXTERNALLY MANAGED"]
    for i in report.kubeadm_certificates:
        if i.missing or i.not_after is None:
            lines.append(f"!MISSING! {i.name}\t\t\t\t")
            continue
        lines.append(f"{i.name}\t{kubeadm_date(i.not_after)}\t{_residual(i, now)}\t{i.ca_name}\t"
                     f"{_yes_no(i.externally_managed)}")
    out = tabwrite(lines) + "\n"
    lines = ["CERTIFICATE AUTHORITY\tEXPIRES\tRESIDUAL TIME\tEXTERNALLY MANAGED"]
    for i in report.kubeadm_authorities:
        if i.missing or i.not_after is None:
            lines.append(f"!MISSING! {i.name}\t\t\t")
            continue
        lines.append(f"{i.name}\t{kubeadm_date(i.not_after)}\t{_residual(i, now)}\t"
                     f"{_yes_no(i.externally_managed)}")
    return out + tabwrite(lines)


def extras_table(report: NodeReport) -> str:
    if not report.extras:
        return ""
    now = report.now
    lines = ["KUBECERT EXTRA\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tFILE"]
    for i in report.extras:
        where = i.cert_source or i.path
        if i.missing:
            lines.append(f"!MISSING! {i.name}\t\t\t\t{where}")
        elif i.error:
            lines.append(f"!UNREADABLE! {i.name}\t\t\t\t{where}")
        elif i.not_after is None:  # sa: keys do not expire
            lines.append(f"{i.name}\tnever\t-\t-\t{where}")
        else:
            ca = i.ca_name or "self-signed"
            lines.append(f"{i.name}\t{kubeadm_date(i.not_after)}\t{_residual(i, now)}\t{ca}\t{where}")
    return tabwrite(lines)


def audit_section(report: NodeReport) -> str:
    lines: List[str] = [f"AUDIT  profile {report.profile.name} ({report.profile.reason})"]
    if not report.findings:
        lines.append("  no findings")
    for f in report.findings:
        sev = "ERROR" if f.severity == ERROR else "WARN "
        where = f"{f.path}: " if f.path else ""
        if f.code == "key-permissions":  # names many files; the message lists them
            lines.append(f"  {sev} {f.message}")
        else:
            lines.append(f"  {sev} {f.name or '-'}: {where}{f.message}")
        lines.append(f"        fix: {f.fix}")
    return "\n".join(lines) + "\n"


def render(report: NodeReport, summary: Optional[str] = None) -> str:
    # kubeadm has nothing to show on a worker: only kubecert's own rows
    parts = [] if report.profile.is_worker else [kubeadm_tables(report)]
    extra = extras_table(report)
    if extra:
        parts.append(("\n" if parts else "") + extra)
    parts.append("\n" + audit_section(report))
    if summary:
        parts.append(summary + "\n")
    return "".join(parts)
