"""Pictures: `check --timeline` (text), `report --html` (one self-contained page) and the cluster
renderers, on lab nodes and on trees written by kubeadm v1.28.4; the page rendered in Debian's
headless Chromium inside a network namespace, its requests read back from Chromium's net log."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from conftest import check_now, node
from kubecert.cluster import cluster_check, local_connect
from kubecert.inventory import scan
from kubecert.remote.hosts import load_inventory
from kubecert.report import html as H
from kubecert.report import timeline as T
from kubecert.store import LocalFS
from treeutil import assert_one_line_error, clean_env, copy_tree, lab_create, run_kubecert

DAY = dt.timedelta(days=1)
WARN, CRIT = 30 * DAY, 7 * DAY
FIXTURE = "single-stacked/master-1"
HOSTILE = "<script>alert(1)</script>"


def rfc3339(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_json(root: Path, now: str) -> Dict[str, Any]:
    proc = run_kubecert("check", "--root", str(root), "--now", now, "-o", "json")
    assert proc.returncode in (0, 1, 2), proc.stderr
    data: Dict[str, Any] = json.loads(proc.stdout)
    return data


def inventory_names(data: Dict[str, Any]) -> List[str]:
    return [c["name"] for k in ("certificates", "certificateAuthorities", "extraCertificates") for c in data[k]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stacked control planes made now (the real clock: `renew` needs it), leaves for 20 days."""
    return lab_create(tmp_path_factory.mktemp("report"), "--nodes", "2", "--expires-in", "20d")


@pytest.fixture(scope="module")
def leaf_end(lab: Path) -> dt.datetime:
    """The lab's leaves' NotAfter; every test pins --now relative to it."""
    data = check_json(lab / "master-1", rfc3339(dt.datetime.now(dt.timezone.utc)))
    end = {c["expirationDate"] for c in data["certificates"]}
    assert len(end) == 1
    return dt.datetime.fromisoformat(end.pop().replace("Z", "+00:00"))


# --- check --timeline --------------------------------------------------------------------------------

def timeline(root: Path, now: str, columns: int = 80, *extra: str) -> Tuple[int, str]:
    proc = run_kubecert("check", "--root", str(root), "--now", now, "--timeline", *extra,
                        env=clean_env(COLUMNS=str(columns), NO_COLOR="1", TERM="xterm-256color"))
    assert proc.stderr == "", proc.stderr
    return proc.returncode, proc.stdout


def chart_rows(out: str, names: List[str]) -> Dict[str, List[str]]:
    """name -> the chart rows that start with it (the audit below the chart is left out)."""
    chart = out.split("\nAUDIT ", 1)[0]
    rows: Dict[str, List[str]] = {n: [] for n in names}
    for line in chart.splitlines():
        first = line.split(" ", 1)[0]
        if first in rows:
            rows[first].append(line)
    return rows


def today_columns(out: str) -> Set[int]:
    """The column of the today mark on the ruler and on every bar row."""
    chart = out.split("\nAUDIT ", 1)[0]
    return {line.index("│") for line in chart.splitlines() if "│" in line and not line.startswith("│ today")}


def test_timeline_lab_one_bar_per_cert_warn_zone(lab: Path, leaf_end: dt.datetime) -> None:
    now = rfc3339(leaf_end - dt.timedelta(days=19, hours=12))
    names = inventory_names(check_json(lab / "master-1", now))
    code, out = timeline(lab / "master-1", now)
    assert code == 1  # as check: something within --warn
    assert "\x1b[" not in out  # NO_COLOR, not a terminal: plain text
    chart = out.split("\nAUDIT ", 1)[0]
    assert all(len(line) <= 80 for line in chart.splitlines()), chart
    rows = chart_rows(out, names)
    assert {n: len(r) for n, r in rows.items()} == {n: 1 for n in names}, chart
    cas_at = chart.index("CERTIFICATE AUTHORITIES")
    for n in ("ca", "etcd-ca", "front-proxy-ca"):
        assert chart.index(rows[n][0]) > cas_at  # CAs on their own scale, below the leaves
        assert rows[n][0].rstrip().endswith(" 9y")
    sections = chart.split("CERTIFICATE AUTHORITIES")
    ruler = next(line for line in sections[0].splitlines() if line.startswith("zones "))
    track = len(re.match(r"zones \S+ \S+\s+", ruler).group(0))  # type: ignore[union-attr]
    zone = [i for i, c in enumerate(ruler) if c in "!~" and i >= track]
    today = ruler.index("│")
    assert zone and zone[0] == today + 1  # the zones start at today
    for n in names:
        row = rows[n][0]
        if n == "sa":
            assert row.rstrip().endswith("never expires") and "█" not in row
            continue
        assert row.index("│") == (today if n not in ("ca", "etcd-ca", "front-proxy-ca") else row.index("│"))
        if n in ("ca", "etcd-ca", "front-proxy-ca"):
            continue
        assert row.rstrip().endswith(f"{leaf_end:%Y-%m-%d} WARN 19d"), row
        end = row.rindex("█")
        assert today < end and zone[0] <= end <= zone[-1], (row, ruler)  # ends inside the warn zone
    assert len(today_columns(sections[0])) == 1  # one today line down the whole section


def test_timeline_lab_crit_and_expired(lab: Path, leaf_end: dt.datetime) -> None:
    names = inventory_names(check_json(lab / "master-1", rfc3339(leaf_end)))
    leaves = [n for n in names if n not in ("sa", "ca", "etcd-ca", "front-proxy-ca")]
    code, out = timeline(lab / "master-1", rfc3339(leaf_end - dt.timedelta(days=3, hours=12)))
    assert code == 2
    rows = chart_rows(out, names)
    assert all(rows[n][0].rstrip().endswith("CRIT 3d") for n in leaves), out
    code, out = timeline(lab / "master-1", rfc3339(leaf_end + 2 * DAY))
    assert code == 2
    rows = chart_rows(out, names)
    for n in leaves:
        row = rows[n][0]
        assert row.rstrip().endswith(f"{leaf_end:%Y-%m-%d} EXPIRED"), row
        assert "░" in row and "█" not in row  # an expired bar looks different without colour
        assert row.rindex("░") < row.index("│")  # and ends before today
    assert all("█" in rows[n][0] for n in ("ca", "etcd-ca", "front-proxy-ca"))


@pytest.mark.parametrize("columns", [80, 60])
def test_timeline_fixture_kubeadm_tree(columns: int) -> None:
    root = node(FIXTURE)
    now = check_now(root)
    names = inventory_names(check_json(root, now))
    code, out = timeline(root, now, columns)
    chart = out.split("\nAUDIT ", 1)[0]
    assert all(len(line) <= columns for line in chart.splitlines()), chart
    rows = chart_rows(out, names)
    assert {n: len(r) for n, r in rows.items()} == {n: 1 for n in names}
    for n in names:
        row = rows[n][0].rstrip()
        assert row.endswith("never expires" if n == "sa" else "9y" if n.endswith("ca") else "364d"), row
    # a year later every leaf is expired, the CAs are not
    code, out = timeline(root, "2027-12-15T00:00:00Z", columns)
    assert code == 2
    rows = chart_rows(out, names)
    assert {n for n in names if "EXPIRED" in rows[n][0]} == {n for n in names if n != "sa" and not n.endswith("ca")}


def test_timeline_colour_and_refusals(lab: Path, leaf_end: dt.datetime) -> None:
    report = scan(LocalFS(str(lab / "master-1")), now=leaf_end - dt.timedelta(days=3))
    tl = T.node_timeline(report, warn=WARN, crit=CRIT)
    assert len(tl.bars) == len(report.items)
    assert {b.state for b in tl.bars if b.name == "apiserver"} == {T.CRIT}
    coloured = T.as_text(T.render_text(tl, 80), 80, color=True)
    row = next(line for line in coloured.splitlines() if line.startswith("\x1b[1;31mapiserver "))
    assert "\x1b[1;31m███" in row  # the crit bar is red
    plain = T.as_text(T.render_text(tl, 80), 80)
    assert "\x1b[" not in plain and re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain  # colour adds nothing else
    proc = run_kubecert("check", "--root", str(lab / "master-1"), "--timeline", "-o", "json")
    assert proc.returncode == 3
    assert_one_line_error(proc, "--timeline")


# --- report --html -----------------------------------------------------------------------------------

VOID = {"meta", "br", "img", "link", "input", "hr", "source", "base", "area", "col", "embed", "wbr"}


class Page(HTMLParser):
    """Tags, the bars of the SVG timeline, the text, and every table (with the id of the h2 above it)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: List[Tuple[str, Dict[str, str]]] = []
        self.bars: List[Dict[str, str]] = []
        self.data_certs_outside_svg = 0
        self.text: List[str] = []
        self.styles: List[str] = []
        self.tables: List[Tuple[Optional[str], List[List[str]]]] = []
        self._stack: List[str] = []
        self._h2: Optional[str] = None
        self._cell: Optional[List[str]] = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if "data-cert" in a:
            if "svg" in self._stack:
                self.bars.append(a)
            else:
                self.data_certs_outside_svg += 1
        if tag == "h2":
            self._h2 = a.get("id")
        elif tag == "table":
            self.tables.append((self._h2, []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._stack and self._stack[-1] == "style":
            self.styles.append(data)


def assert_offline(text: str, page: Page) -> None:
    """Nothing in the page can make a browser fetch anything."""
    assert "http://" not in text and "https://" not in text
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "img", "object", "embed", "base", "audio", "video",
                           "source", "frame", "form", "image", "use", "foreignobject", "meta") or \
            (tag == "meta" and set(attrs) <= {"charset", "name", "content"} and "refresh" not in str(attrs)), tag
        for k, v in attrs.items():
            assert k not in ("src", "srcset", "href", "xlink:href", "action", "poster", "data", "background"), (tag, k)
            assert not k.startswith("on"), (tag, k)
            assert "url(" not in v and "//" not in v, (tag, k, v)
    css = "".join(page.styles)
    assert css and "url(" not in css and "@import" not in css and "//" not in css


def make_report(root: Path, out: Path, now: str, *extra: str) -> Tuple[str, Page]:
    proc = run_kubecert("report", "--html", str(out), "--root", str(root), "--now", now, *extra)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out} (")
    text = out.read_text("utf-8")
    return text, Page(text)


@pytest.mark.parametrize("which", ["lab", "fixture"])
def test_html_one_bar_per_cert_tables_offline(which: str, lab: Path, leaf_end: dt.datetime, tmp_path: Path) -> None:
    root, now = ((lab / "master-1", rfc3339(leaf_end - 10 * DAY)) if which == "lab"
                 else (node("external-etcd/master-1"), check_now(node("external-etcd/master-1"))))
    data = check_json(root, now)
    text, page = make_report(root, tmp_path / "report.html", now)
    assert oct((tmp_path / "report.html").stat().st_mode & 0o777) == "0o644"
    assert sorted(b["data-cert"] for b in page.bars) == sorted(inventory_names(data))
    assert page.data_certs_outside_svg == 0
    assert_offline(text, page)
    # the tables hold check's facts: every row's name, NotAfter and serial
    cells = {row[0]: row for _, rows in page.tables for row in rows if row}
    for c in (*data["certificates"], *data["certificateAuthorities"], *data["extraCertificates"]):
        row = cells[c["name"]]
        assert (c["serial"] or "-") in row
        if c["expirationDate"]:
            assert row[1].startswith(dt.datetime.fromisoformat(c["expirationDate"][:-1]).strftime("%b %d, %Y"))
    states = {b["data-cert"]: b["data-state"] for b in page.bars}
    if which == "lab":
        assert states["apiserver"] == "warn" and states["ca"] == "ok" and states["sa"] == "never"
    for f in data["findings"]:
        assert f["message"] in "".join(page.text)
    verdict = {0: "OK", 1: "WARNING", 2: "CRITICAL"}[data["exitCode"]]
    assert f"{verdict} (exit {data['exitCode']})" in "".join(page.text)


def hostile_node(lab: Path, dest: Path) -> Path:
    """A copy of a lab node whose node name and front-proxy-client CN are an HTML script."""
    root = copy_tree(lab / "master-1", dest)
    pki = root / "etc/kubernetes/pki"
    ca = x509.load_pem_x509_certificate((pki / "front-proxy-ca.crt").read_bytes())
    ca_key: Any = serialization.load_pem_private_key((pki / "front-proxy-ca.key").read_bytes(), None)
    old = x509.load_pem_x509_certificate((pki / "front-proxy-client.crt").read_bytes())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE)]))
            .issuer_name(ca.subject).public_key(old.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(old.not_valid_before_utc).not_valid_after(old.not_valid_after_utc)
            .sign(ca_key, hashes.SHA256()))
    (pki / "front-proxy-client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    config = root / "etc/kubernetes/kubeadm-config.yaml"
    config.write_text(config.read_text().replace("name: master-1", f"name: '{HOSTILE}'"))
    return root


def test_html_escapes_hostile_strings(lab: Path, leaf_end: dt.datetime, tmp_path: Path) -> None:
    root = hostile_node(lab, tmp_path / "node")
    text, page = make_report(root, tmp_path / "hostile.html", rfc3339(leaf_end - 10 * DAY))
    assert "<script" not in text.lower()
    assert not [t for t, _ in page.tags if t == "script"]
    shown = "".join(page.text)
    assert f"kubecert report: {HOSTILE}" in shown  # the node name, as text
    assert "CN=\\<script\\>alert(1)\\</script\\>" in shown  # the subject (RFC 4514), as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert_offline(text, page)
    # the renderer escapes every field, not only what RFC 4514 already escapes
    report = scan(LocalFS(str(root)), now=leaf_end - 10 * DAY)
    items = tuple(dataclasses.replace(i, subject=f"CN={HOSTILE}", path=f"/x/{HOSTILE}") for i in report.items)
    raw = H.render_node(dataclasses.replace(report, items=items), warn=WARN, crit=CRIT, exit_code=1)
    assert "<script" not in raw and raw.count("&lt;script&gt;") >= 2 * len(items)


def test_html_before_after_last_renewal(lab: Path, tmp_path: Path) -> None:
    root = copy_tree(lab / "master-1", tmp_path / "node")
    now = dt.datetime.now(dt.timezone.utc)
    _, page = make_report(root, tmp_path / "before.html", rfc3339(now))
    assert "No renewal recorded" in "".join(page.text)
    before = openssl_serials(root)
    proc = run_kubecert("renew", "all", "--root", str(root), "--yes")
    assert proc.returncode == 0, proc.stderr
    renewed = {m.group(1) for m in re.finditer(r"^(\S+)\s+renew\s", proc.stdout, re.M)}
    backup = re.search(r"backup (\S+) in ", proc.stdout)
    assert renewed and backup
    after = openssl_serials(root)
    text, page = make_report(root, tmp_path / "after.html", rfc3339(now))
    table = [rows for h2, rows in page.tables if h2 == "renewal"]
    assert len(table) == 1
    header, *rows = table[0]
    assert header[:3] == ["CERTIFICATE", "SERIAL BEFORE", "SERIAL AFTER"]
    assert {r[0] for r in rows} == renewed == set(before) - {"ca", "etcd-ca", "front-proxy-ca"}
    for name, old, new, _, new_end, on_node, copy, _ in rows:
        assert (old, new) == (before[name], after[name]), name
        assert old != new and on_node == "yes", name
        assert copy == ("-" if name == "kubelet.conf" else "matches"), name  # kubelet.conf: a new dated file
        # the renewal read the clock after `now` (a month may have turned in between)
        assert new_end[:7] in {f"{t + 365 * DAY:%Y-%m}" for t in (now, dt.datetime.now(dt.timezone.utc))}, new_end
    assert f"Last renewal: renew {backup.group(1)}" in "".join(page.text)
    # the bars show the new NotAfter: nothing within --warn any more
    assert {b["data-state"] for b in page.bars if b["data-cert"] in renewed} == {"ok"}
    # a rollback: the page says so, and that the files no longer hold the new serials
    proc = run_kubecert("rollback", "--root", str(root), "--yes")
    assert proc.returncode == 0, proc.stderr
    _, page = make_report(root, tmp_path / "rolled-back.html", rfc3339(now))
    rows = next(rows for h2, rows in page.tables if h2 == "renewal")[1:]
    assert "rolled back since" in "".join(page.text)
    assert {r[5] for r in rows} == {"no: changed since"}


def openssl_serials(root: Path) -> Dict[str, str]:
    """name -> serial as `openssl x509 -serial` reads it, for every cert of the node's inventory."""
    data = check_json(root, rfc3339(dt.datetime.now(dt.timezone.utc)))
    fs = LocalFS(str(root))
    out = {}
    for c in (*data["certificates"], *data["certificateAuthorities"], *data["extraCertificates"]):
        if c["serial"] is None:
            continue
        if c["kind"] == "kubeconfig" and c["certificateSource"] is None:
            user = yaml.safe_load(fs.read(c["path"]))["users"][0]["user"]
            pem = base64.b64decode(user["client-certificate-data"])
        else:
            pem = fs.read(c["certificateSource"] or c["path"])
        proc = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, check=True)
        out[c["name"]] = proc.stdout.decode().strip().split("=", 1)[1].lstrip("0") or "0"
    return out


def test_report_refusals_and_atomic_replace(lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("old")
    os.chmod(out, 0o600)
    make_report(lab / "master-1", out, "2026-12-01T00:00:00Z")
    assert out.read_text().startswith("<!DOCTYPE html>") and (out.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temp file left
    proc = run_kubecert("report", "--html", str(tmp_path / "nowhere/r.html"), "--root", str(lab / "master-1"))
    assert proc.returncode == 3
    assert_one_line_error(proc, "does not exist")
    proc = run_kubecert("report", "--html", str(tmp_path), "--root", str(lab / "master-1"))
    assert proc.returncode == 3
    assert_one_line_error(proc, "is a directory")
    proc = run_kubecert("report", "--html", str(out), "--root", str(tmp_path / "no-root"))
    assert proc.returncode == 3
    assert_one_line_error(proc, "root directory does not exist")
    proc = run_kubecert("report", "--root", str(lab / "master-1"))
    assert proc.returncode == 3
    assert_one_line_error(proc, "--html")


# --- Chromium ----------------------------------------------------------------------------------------

_CHROMIUM: List[Optional[str]] = []


def chromium() -> str:
    """Debian's chromium (another process installs it: wait up to 10 minutes, polling every 20 s)."""
    if not _CHROMIUM:
        deadline = time.monotonic() + 600
        found = shutil.which("chromium")
        while found is None and time.monotonic() < deadline:
            time.sleep(20)
            found = shutil.which("chromium")
        _CHROMIUM.append(found)
    if _CHROMIUM[0] is None:
        pytest.fail("chromium not installed after 10 minutes (apt-get install chromium)")
    return str(_CHROMIUM[0])


def run_chromium(page: Path, tmp: Path, *args: str) -> Tuple[str, List[Dict[str, Any]]]:
    """Chromium in a network namespace that has only lo; returns stdout and the page's own requests
    from its net log (the browser's background requests carry no page origin)."""
    netlog = tmp / f"{page.stem}-{len(list(tmp.iterdir()))}.netlog.json"
    proc = subprocess.run(
        ["unshare", "-n", chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", f"--log-net-log={netlog}",
         f"--user-data-dir={tmp / 'profile'}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = json.loads(netlog.read_text())
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = [e["params"] for e in log["events"] if types.get(e["type"]) == "URL_REQUEST_START_JOB"
                and "file://" in e["params"].get("network_isolation_key", "")]
    return proc.stdout, requests


def png_rows(data: bytes) -> Tuple[int, List[bytes]]:
    """Decode an 8-bit RGB(A) non-interlaced PNG: (bytes per pixel, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data[pos + 8:pos + 8 + n])
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    assert ihdr is not None
    width, height, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp, raw = (3 if ctype == 2 else 4), zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev, rows = bytearray(stride), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return bpp, rows


def test_chromium_renders_page_offline(lab: Path, leaf_end: dt.datetime, tmp_path: Path) -> None:
    root = hostile_node(lab, tmp_path / "node")
    page = tmp_path / "report.html"
    now = rfc3339(leaf_end - 10 * DAY)
    make_report(root, page, now)
    expected = inventory_names(check_json(root, now))
    shot = tmp_path / "shot.png"
    _, requests = run_chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert requests == []
    bpp, rows = png_rows(shot.read_bytes())
    colours = {r[x:x + 3] for r in rows for x in range(0, len(r), bpp)}
    assert len(rows) == 2000 and len(colours) > 50  # not blank
    assert bytes((0x43, 0xA0, 0x47)) in colours  # a valid (green) bar
    assert bytes((0xF9, 0xA8, 0x25)) in colours  # the leaves, within --warn (amber)
    dom, requests = run_chromium(page, tmp_path, "--dump-dom")
    assert requests == []
    rendered = Page(dom)
    assert sorted(b["data-cert"] for b in rendered.bars) == sorted(expected)
    assert not [t for t, _ in rendered.tags if t == "script"]
    assert HOSTILE in "".join(rendered.text)  # shown as text, never run
    # the net log does see a page that loads something: the check above can fail
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img src="http://198.51.100.7/x.png"></body></html>')
    _, requests = run_chromium(leaky, tmp_path, "--dump-dom")
    assert any("198.51.100.7" in json.dumps(r) for r in requests), requests


# --- the cluster renderers ---------------------------------------------------------------------------

def test_cluster_timeline_and_html(lab: Path, leaf_end: dt.datetime, tmp_path: Path) -> None:
    now = leaf_end - 10 * DAY
    hosts = load_inventory(str(lab / "inventory.yaml"))
    report = cluster_check(hosts, local_connect, now=now, members=False)
    assert [n.name for n in report.nodes] == ["master-1", "master-2"] and all(n.report for n in report.nodes)
    per_node = {n.name: [i.name for i in n.report.items] for n in report.nodes if n.report}
    tl = T.cluster_timeline(report, warn=WARN, crit=CRIT)
    text = T.as_text(T.render_text(tl, 80), 80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    for section in ("CERTIFICATES", "CERTIFICATE AUTHORITIES"):
        assert sum(line.startswith(section + " ") for line in lines) == 1
    assert sum(line == "master-1" for line in lines) == 2 and sum(line == "master-2" for line in lines) == 2
    bar_rows = [line for line in lines if line.startswith("  ") and not line.rstrip().endswith("NotAfter")]
    assert len(bar_rows) == sum(len(v) for v in per_node.values())
    assert len({line.index("│") for line in bar_rows if "CERTIFICATE AUTHORITIES" not in line}) <= 2  # shared scales
    page_text = H.render_cluster(report, warn=WARN, crit=CRIT, exit_code=report.exit_code(WARN, CRIT))
    page = Page(page_text)
    assert_offline(page_text, page)
    for name, items in per_node.items():
        assert sorted(b["data-cert"] for b in page.bars if b["data-node"] == name) == sorted(items)
    assert len(page.bars) == sum(len(v) for v in per_node.values())
    # an unreachable node is named, with no bars
    down = dataclasses.replace(report, nodes=(report.nodes[0], dataclasses.replace(
        report.nodes[1], report=None, error=f"ssh: {HOSTILE} timed out")))
    text = T.as_text(T.render_text(T.cluster_timeline(down, warn=WARN, crit=CRIT), 80), 80)
    assert text.startswith("!UNREACHABLE! master-2: ssh: ")
    page_text = H.render_cluster(down, warn=WARN, crit=CRIT, exit_code=2)
    page = Page(page_text)
    assert {b["data-node"] for b in page.bars} == {"master-1"} and "<script" not in page_text
    assert f"unreachable: ssh: {HOSTILE} timed out" in "".join(page.text)
