"""`kubecert report --html FILE`: one self-contained HTML page of a node for a change ticket.

Reads the node (check's scan) and its last change from kubecert's backups and audit log (read
only), has :mod:`kubecert.report.html` render the page, and writes it atomically (temp file +
rename in the target directory, 0644). :func:`write_page` is shared with ``cluster check --html``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import click

from .. import spec
from .common import handle_errors, now_option, parse_duration, parse_now, profile_option, root_option


def write_page(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (0644); returns the absolute path written."""
    from ..errors import ConfigError
    from ..store import LocalFS

    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ConfigError(f"{path}: directory {directory} does not exist")
    if os.path.isdir(target):
        raise ConfigError(f"{path}: is a directory; name the HTML file to write")
    # LocalFS refuses to follow links in directories another user controls, and writes there as that
    # user: a report path in /tmp cannot be turned against root
    LocalFS("/").write_atomic(target, text.encode("utf-8"), 0o644)
    return target


def _audit_records(fs: Any, backup_id: str) -> List[Dict[str, Any]]:
    from ..layout import AUDIT_LOG

    if not fs.exists(AUDIT_LOG):
        return []
    out = []
    for line in fs.read(AUDIT_LOG, limit=None).decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line; the others still count
        if isinstance(rec, dict) and rec.get("backup") == backup_id and isinstance(rec.get("name"), str):
            out.append(rec)
    return out


def _backup_serial(fs: Any, backup: Any, shown_file: str) -> Optional[str]:
    """The serial of the certificate the backup copy of ``shown_file`` holds (None: none there)."""
    from .. import x509ops
    from ..errors import KubecertError
    from ..kubeconfig import parse as parse_kubeconfig
    from ..store.txn import BACKUPS_DIR

    for e in backup.entries:
        if not e.existed or e.link_target is not None or fs.display(e.path) != shown_file:
            continue
        copy = f"{BACKUPS_DIR}/{backup.id}/files{e.path}"
        try:
            data = fs.read(copy)
            if e.path.endswith(".conf"):
                pem = parse_kubeconfig(data, fs.display(copy)).client_cert_data
                if pem is None:
                    return None
                data = pem
            return format(x509ops.load_certs(data, fs.display(copy))[0].serial_number, "X")
        except KubecertError:
            return None
    return None


def last_renewal(fs: Any, report: Any) -> Any:
    """The newest change kubecert made on the node (not a rollback, not undone), with each
    certificate's before -> after from the audit log, checked against the backup copies and the
    node today. None when kubecert never changed the node."""
    from ..report.html import CertChange, Renewal
    from ..rollback import in_effect
    from ..store.txn import list_backups

    backups = list_backups(fs)
    changes = [b for b in backups if b.action != "rollback" and not b.undone]
    if not changes:
        return None
    b = changes[-1]
    live = {x.id for x in in_effect(backups)}
    now_serial = {i.name: format(i.serial, "X") for i in report.items if i.serial is not None}
    certs = []
    for r in _audit_records(fs, b.id):
        file = str(r.get("file") or "")
        certs.append(CertChange(
            r["name"], file, _opt(r.get("oldSerial")), _opt(r.get("newSerial")), _opt(r.get("oldNotAfter")),
            _opt(r.get("newNotAfter")), now_serial.get(r["name"]), _backup_serial(fs, b, file)))
    return Renewal(b.id, b.created, b.action, b.id in live, len(b.entries), tuple(certs))


def _opt(value: Any) -> Optional[str]:
    return None if value is None else str(value)


@click.command()
@click.option("--html", "html_file", required=True, metavar="FILE",
              help="Write the report here (one self-contained HTML file; replaced atomically, 0644).")
@root_option
@click.option("--warn", "warn_text", default="30d", show_default=True, help="The warn zone (as check).")
@click.option("--crit", "crit_text", default="7d", show_default=True, help="The crit zone (as check).")
@click.option("--ca-warn", "ca_warn_text", default="365d", show_default=True, help="A CA's warn zone (as check).")
@now_option
@profile_option
@handle_errors
def report(html_file: str, root: str, warn_text: str, crit_text: str, ca_warn_text: str, now_text: Optional[str],
           profile_text: Optional[str]) -> None:
    """One HTML page of a node for a change ticket: timeline, check's tables, the audit, and the
    before -> after of the last renewal. Loads nothing from the network; nothing on the node changes.

    Exit 0 when the page is written (its status says what check would exit with), 3 on bad input."""
    warn, crit, ca_warn = parse_duration(warn_text), parse_duration(crit_text), parse_duration(ca_warn_text)
    now = parse_now(now_text)
    from ..inventory import scan
    from ..report.html import render_node
    from ..store import LocalFS

    fs = LocalFS(root)
    node = scan(fs, now=now, profile=spec.parse_profile(profile_text) if profile_text else None, ca_warn=ca_warn)
    code = node.exit_code(warn, crit)
    page = render_node(node, warn=warn, crit=crit, ca_warn=ca_warn, exit_code=code, renewal=last_renewal(fs, node))
    written = write_page(html_file, page)
    verdict = {0: "OK", 1: "WARNING", 2: "CRITICAL"}[code]
    click.echo(f"wrote {written} ({len(node.items)} certificates, {len(node.findings)} finding(s), status {verdict})")
