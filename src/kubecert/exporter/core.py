"""One scrape: the node's kubeadm certificates and any watched files, as metric families.

``Exporter(options).scrape(now)`` returns the families of one scrape. It never raises for what it
finds on the node: an unreadable or corrupt file is an ``x509_read_errors`` count (and, with
``per_cert_errors``, an ``x509_cert_error`` series) plus one log line when the problem first appears;
a root without a kubeadm PKI is ``kubecert_node_up 0``. Only a wrong configuration (a ``--root``
that does not exist) raises, when the exporter is made.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from .. import __version__, spec
from .. import layout as L
from ..errors import KubecertError
from ..inventory import CA_WARN, NodeReport, scan
from ..store import LocalFS
from .files import KUBECONF, PEM, CertSeries, Parsed, Reader, SourceCache, Stats, base_labels, parse_kubeconf, parse_pem
from .metrics import Family, Labels
from .nodefs import ExporterFS, NodeReader, is_key_path

log = logging.getLogger("kubecert.exporter")

# kubecert's own transactions that renew something (a rollback undoes one; it is not a renewal)
NOT_RENEWALS = ("rollback",)
# the audit of an unchanged node is redone at least this often: its findings depend on the time too
NODE_RESCAN = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Options:
    root: str = "/"
    kubeadm: bool = True  # inventory and audit the kubeadm PKI under root
    profile: Optional[spec.Profile] = None
    watch_files: Tuple[str, ...] = ()  # host paths or globs, PEM
    watch_dirs: Tuple[str, ...] = ()  # host directories, every certificate file in them (not recursive)
    watch_kubeconfs: Tuple[str, ...] = ()  # host paths or globs, kubeconfigs
    trim_path_components: int = 0
    relative_metrics: bool = False  # x509_cert_expires_in_seconds, x509_cert_valid_since_seconds
    per_cert_errors: bool = False  # x509_cert_error
    ca_warn: dt.timedelta = CA_WARN


@dataclass
class Scrape:
    families: List[Family]
    files_read: int
    read_errors: int
    seconds: float
    report: Optional[NodeReport] = None
    errors: Dict[str, str] = field(default_factory=dict)  # filepath -> message


def _families(*specs: Tuple[str, str]) -> Dict[str, Family]:
    return {name: Family(name, text) for name, text in specs}


class Exporter:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.stats = Stats()
        self.node_fs = ExporterFS(LocalFS(options.root), self.stats) if options.kubeadm else None
        self.node_reader = NodeReader(self.node_fs) if self.node_fs else None
        self.host_reader = Reader(self.stats)
        self.cache = SourceCache()
        self._logged: Dict[str, str] = {}
        # the last audit, what the node answered during it, and the refused key files
        self._last: Optional[Tuple[NodeReport, List[Tuple[str, str, object]], Set[str]]] = None

    # -- logging: one line per problem, when it appears or changes ---------------------------
    def _note(self, key: str, message: Optional[str]) -> None:
        if message is None:
            if self._logged.pop(key, None) is not None:
                log.info("%s: readable again", key)
            return
        if self._logged.get(key) != message:
            self._logged[key] = message
            log.warning("%s", message)

    # -- sources -------------------------------------------------------------------------------
    def _host_sources(self) -> Tuple[List[Tuple[str, str, bool]], List[str]]:
        """(kind, path, required) of every watched host file, and errors of patterns matching nothing."""
        out: List[Tuple[str, str, bool]] = []
        errors: List[str] = []
        for kind, patterns in ((PEM, self.options.watch_files), (KUBECONF, self.options.watch_kubeconfs)):
            for pattern in patterns:
                if glob.has_magic(pattern):
                    matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
                    if not matches:
                        errors.append(f"{pattern}: no files match")
                    out.extend((kind, p, True) for p in matches)
                else:
                    out.append((kind, pattern, True))
        for directory in self.options.watch_dirs:
            try:
                with os.scandir(directory) as it:
                    names = sorted(e.name for e in it if e.is_file() and not is_key_path(e.name))
            except OSError as exc:
                errors.append(f"{directory}: cannot list ({exc.strerror})")
                continue
            prefix = directory.rstrip("/") + "/"
            out.extend((PEM, prefix + n, False) for n in names)
        return out, errors

    def _parse(self, kind: str, path: str, reader: Reader, required: bool) -> Optional[Parsed]:
        trim = self.options.trim_path_components
        if kind == KUBECONF:
            return self.cache.get(kind, path, reader, lambda: parse_kubeconf(reader, path, trim))
        return self.cache.get(kind, path, reader, lambda: parse_pem(reader, path, trim, required=required))

    # -- the scrape ------------------------------------------------------------------------------
    def scrape(self, now: dt.datetime) -> Scrape:
        t0 = time.perf_counter()
        before = self.stats.files_read
        report: Optional[NodeReport] = None
        node_error: Optional[str] = None
        parsed: List[Parsed] = []
        keys: Set[Tuple[str, str]] = set()
        if self.node_fs is not None and self.node_reader is not None:
            try:
                report = self._scan(now)
            except KubecertError as exc:
                node_error = str(exc)
            self._note(f"root {self.options.root}", node_error)
            for kind, path in self._node_sources(report):
                keys.add((kind, "node:" + path))
                p = self.cache.get(kind, "node:" + path, self.node_reader,
                                   lambda k=kind, q=path: self._node_parse(k, q))  # type: ignore[misc]
                if p is not None:
                    parsed.append(p)
        host, pattern_errors = self._host_sources()
        for kind, path, required in host:
            keys.add((kind, path))
            p = self._parse(kind, path, self.host_reader, required)
            if p is not None:
                parsed.append(p)
        self.cache.keep_only(keys)
        for message in pattern_errors:
            self._note(message.split(":")[0], message)
        errors: Dict[str, str] = {}
        for p in parsed:
            self._note(p.path, p.error)
            if p.error:
                errors[p.path] = p.error
        families = self._x509(parsed, now, len(errors) + len(pattern_errors) + (1 if node_error else 0))
        families += self._kubecert(report, node_error)
        if self.node_fs is not None and self.stats.files_read != before:
            self.node_fs.forget_missing()
        seconds = time.perf_counter() - t0
        files_read = self.stats.files_read - before
        own = _families(("kubecert_exporter_scrape_duration_seconds", "Time the last scrape took to read and audit."),
                        ("kubecert_exporter_files_read", "Files read by the last scrape (unchanged files are not re-read)."),
                        ("kubecert_exporter_cached_sources", "Certificate files and kubeconfigs held in the cache."))
        own["kubecert_exporter_scrape_duration_seconds"].add((), round(seconds, 6))
        own["kubecert_exporter_files_read"].add((), files_read)
        own["kubecert_exporter_cached_sources"].add((), len(self.cache))
        families += list(own.values())
        return Scrape(families, files_read, len(errors) + len(pattern_errors) + (1 if node_error else 0),
                      seconds, report, errors)

    def _scan(self, now: dt.datetime) -> NodeReport:
        """The node's inventory and audit: the last one while the node answers the same and it is
        younger than NODE_RESCAN, else a new pass."""
        fs = self.node_fs
        assert fs is not None
        last = self._last
        if last is not None and dt.timedelta(0) <= now - last[0].now < NODE_RESCAN and fs.unchanged(last[1]):
            fs.refused = set(last[2])
            return last[0]
        self._last = None
        fs.refused = set()
        fs.record = []
        try:
            report = scan(fs, now=now, profile=self.options.profile, ca_warn=self.options.ca_warn)
        finally:
            record, fs.record = fs.record, None
        self._last = (report, record, set(fs.refused))
        return report

    def _node_sources(self, report: Optional[NodeReport]) -> List[Tuple[str, str]]:
        if report is None:
            return []
        out = []
        for i in report.items:
            if i.missing or i.entry.kind is spec.Kind.KEYPAIR:
                continue
            out.append((KUBECONF if i.entry.kind is spec.Kind.KUBECONFIG else PEM, i.path))
        return out

    def _node_parse(self, kind: str, path: str) -> Parsed:
        assert self.node_reader is not None
        trim = self.options.trim_path_components
        p = (parse_kubeconf(self.node_reader, path, trim) if kind == KUBECONF
             else parse_pem(self.node_reader, path, trim))
        assert p is not None
        return p

    # -- x509-certificate-exporter's metrics -------------------------------------------------------
    def _x509(self, parsed: List[Parsed], now: dt.datetime, read_errors: int) -> List[Family]:
        o = self.options
        f = _families(
            ("x509_cert_not_before", "Indicates the certificate's not before timestamp"),
            ("x509_cert_not_after", "Indicates the certificate's not after timestamp"),
            ("x509_cert_expired", "Indicates if the certificate is expired"),
            ("x509_cert_expires_in_seconds", "Indicates the remaining time before the certificate's not after timestamp"),
            ("x509_cert_valid_since_seconds", "Indicates the elapsed time since the certificate's not before timestamp"),
            ("x509_cert_error", "Indicates wether the corresponding secret has read failure(s)"),
            ("x509_read_errors", "Indicates the number of read failure(s)"),
            ("x509_exporter_build_info", "A metric with a constant '1' value labeled with version and build info"))
        nb, na, ex = f["x509_cert_not_before"], f["x509_cert_not_after"], f["x509_cert_expired"]
        exp_in, since, err = f["x509_cert_expires_in_seconds"], f["x509_cert_valid_since_seconds"], f["x509_cert_error"]
        ts = now.timestamp()
        seen: Set[str] = set()
        for p in parsed:
            if o.per_cert_errors:
                err.add(base_labels(p.path, o.trim_path_components), 1 if p.error else 0)
            for c in p.certs:
                if c.text in seen:  # the same certificate watched twice: one series (Prometheus refuses duplicates)
                    continue
                seen.add(c.text)
                self._cert_samples(c, ts, nb, na, ex, exp_in, since)
        f["x509_read_errors"].add((), read_errors)
        f["x509_exporter_build_info"].add((("exporter", "kubecert"), ("python_version", platform.python_version()),
                                           ("version", __version__)), 1)
        return list(f.values())

    def _cert_samples(self, c: CertSeries, ts: float, nb: Family, na: Family, ex: Family, exp_in: Family,
                      since: Family) -> None:
        nb.samples.append((c.text, c.labels, c.not_before, c.not_before_text))
        na.samples.append((c.text, c.labels, c.not_after, c.not_after_text))
        expired = ts > c.not_after
        ex.samples.append((c.text, c.labels, 1 if expired else 0, "1" if expired else "0"))
        if self.options.relative_metrics:
            exp_in.samples.append((c.text, c.labels, round(c.not_after - ts, 3), ""))
            since.samples.append((c.text, c.labels, round(ts - c.not_before, 3), ""))

    # -- kubecert's own --------------------------------------------------------------------------
    def _kubecert(self, report: Optional[NodeReport], node_error: Optional[str]) -> List[Family]:
        if self.node_fs is None:
            return []
        f = _families(
            ("kubecert_node_up", "1 if the kubeadm PKI under the root was inventoried, 0 if not (see the log)."),
            ("kubecert_node_info", "The node: its name, kubecert profile and root."),
            ("kubecert_cert_not_after", "NotAfter (Unix time) of each certificate kubeadm manages, by kubeadm name."),
            ("kubecert_cert_info", "Each certificate by kubeadm name; join with x509_* on filepath and serial_number."),
            ("kubecert_cert_missing", "1 if a certificate or kubeconfig the node's profile needs is missing."),
            ("kubecert_ca_key_present", "1 if the CA's private key is on this node (kubecert can renew its leafs here)."),
            ("kubecert_audit_findings", "Number of audit findings, by kind and severity."),
            ("kubecert_audit_finding", "One audit finding (1), with its certificate, file and message."),
            ("kubecert_interrupted_change", "1 if a kubecert change was interrupted (run: kubecert recover)."),
            ("kubecert_renewal_last_success_timestamp_seconds", "When kubecert last renewed something on this node."),
            ("kubecert_renewal_last_attempt_timestamp_seconds", "When kubecert last tried to renew something."),
            ("kubecert_renewal_last_result", "1 if the last renewal stands, 0 if it failed and was rolled back."))
        f["kubecert_node_up"].add((("root", self.options.root),), 0 if report is None else 1)
        if report is None:
            return list(f.values())
        node = report.facts.node_name or ""
        n: Labels = (("node", node),) if node else ()
        f["kubecert_node_info"].add(n + (("profile", report.profile.name), ("root", self.options.root)), 1)
        for i in report.items:
            if i.entry.kind is spec.Kind.KEYPAIR:
                continue
            kind = i.entry.kind.value
            base = n + (("name", i.name),) + ((("ca", i.ca_name),) if i.ca_name else ()) + (("kind", kind),)
            f["kubecert_cert_missing"].add(base + (("filepath", i.path),), 1 if i.missing else 0)
            if i.entry.is_ca and not i.missing and not i.error:
                f["kubecert_ca_key_present"].add(n + (("name", i.name),), 0 if i.externally_managed else 1)
            if i.not_after is None:
                continue
            managed = "true" if i.externally_managed else "false"
            f["kubecert_cert_not_after"].add(base + (("externally_managed", managed), ("filepath", i.path)),
                                             i.not_after.timestamp())
            embedded: Labels = ((("embedded_kind", "user"),) if i.entry.kind is spec.Kind.KUBECONFIG else ())
            f["kubecert_cert_info"].add(base + embedded + (("filename", os.path.basename(i.path)),
                                                           ("filepath", i.path), ("serial_number", str(i.serial))), 1)
        counts: Dict[Tuple[str, str], int] = {}
        assert self.node_fs is not None
        refused = self.node_fs.refused
        for finding in report.findings:
            if finding.code == "unreadable" and finding.path in refused:
                continue  # a key file the exporter chose not to read: not a finding about the node
            counts[(finding.code, finding.severity)] = counts.get((finding.code, finding.severity), 0) + 1
            f["kubecert_audit_finding"].add(n + (("kind", finding.code), ("message", finding.message[:300]),
                                                 ("name", finding.name), ("path", finding.path),
                                                 ("severity", finding.severity)), 1)
        for (code, severity), count in sorted(counts.items()):
            f["kubecert_audit_findings"].add(n + (("kind", code), ("severity", severity)), count)
        f["kubecert_interrupted_change"].add(n, 1 if self.node_fs.exists(L.JOURNAL) else 0)
        self._renewals(f, n)
        return list(f.values())

    def _renewals(self, f: Dict[str, Family], n: Labels) -> None:
        from ..store.txn import list_backups

        assert self.node_fs is not None
        try:
            backups = [b for b in list_backups(self.node_fs) if b.action not in NOT_RENEWALS]
        except KubecertError as exc:
            self._note("backups", f"{self.node_fs.display(L.STATE_DIR)}: cannot list backups ({exc})")
            return
        self._note("backups", None)

        def when(created: str) -> Optional[float]:
            try:
                return dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
            except ValueError:
                return None

        ok = [b for b in backups if not b.undone and when(b.created) is not None]
        if ok:
            f["kubecert_renewal_last_success_timestamp_seconds"].add(n, when(ok[-1].created) or 0)
        if backups and when(backups[-1].created) is not None:
            last = backups[-1]
            labels = n + (("action", last.action),)
            f["kubecert_renewal_last_attempt_timestamp_seconds"].add(labels, when(last.created) or 0)
            f["kubecert_renewal_last_result"].add(labels, 0 if last.undone else 1)
