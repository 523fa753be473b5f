"""How long does one scrape of `kubecert exporter` take with 10,000 certificate files, cold and warm?

Builds a lab control-plane node (the kubeadm PKI the exporter inventories and audits) and N extra
certificate files in D directories (watched with --watch-dir, as x509-certificate-exporter users
watch theirs), then measures, in-process (imports already paid):

* cold: the first scrape, every file read and parsed, the node audited, the text rendered;
* warm: later scrapes, nothing changed: every file stat'ed, none read (median of --runs);
* touched: 10 files rewritten, the next scrape re-reads exactly those;
* memory: tracemalloc peak during the cold scrape, and the process's peak RSS.

Goals (issue 11): cold <= 2 s, warm <= 0.2 s for 10,000 files.

    python bench/bench_exporter.py [--files 10000] [--dirs 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import List, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

COLD_GOAL_S, WARM_GOAL_S = 2.0, 0.2
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def make_certs(base: Path, files: int, dirs: int) -> List[Path]:
    """``files`` PEM files (one leaf each, signed by one bench CA) spread over ``dirs`` directories."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()  # one public key: signing is what costs
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")])
    out = []
    for d in range(dirs):
        (base / f"d{d:03}").mkdir(parents=True)
    for i in range(files):
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"host-{i}.bench.test")])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(leaf_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=i % 400))
                .sign(ca_key, hashes.SHA256()))
        path = base / f"d{i % dirs:03}" / f"cert-{i:05}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.append(path)
    return out


def scrape_once(exporter: object) -> Tuple[float, int, int]:
    """(seconds, files read, bytes of text) of one scrape, rendering included."""
    from kubecert.exporter.metrics import render_text

    t0 = time.perf_counter()
    s = exporter.scrape(NOW)  # type: ignore[attr-defined]
    text = render_text(s.families)
    return time.perf_counter() - t0, s.files_read, len(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--dirs", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from kubecert.exporter import Exporter, Options
    from kubecert.lab import LabSpec, create

    with tempfile.TemporaryDirectory(prefix="kubecert-bench-exporter-") as tmp:
        t0 = time.perf_counter()
        lab = create(os.path.join(tmp, "lab"), LabSpec(nodes=1), now=NOW)
        paths = make_certs(Path(tmp) / "certs", args.files, args.dirs)
        print(f"setup: lab node + {len(paths)} certificate files in {args.dirs} dirs "
              f"({time.perf_counter() - t0:.1f}s)")
        options = Options(root=str(lab.nodes[0].root),
                          watch_dirs=tuple(str(Path(tmp) / "certs" / f"d{d:03}") for d in range(args.dirs)))
        exporter = Exporter(options)

        tracemalloc.start()
        cold, cold_read, size = scrape_once(exporter)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        cold_again = Exporter(options)  # a second cold scrape, without tracemalloc's overhead
        cold_plain, _, _ = scrape_once(cold_again)

        warm = [scrape_once(exporter) for _ in range(args.runs)]
        warm_times = [w[0] for w in warm]
        warm_reads = max(w[1] for w in warm)

        for p in paths[:10]:  # rewrite 10 files (new mtime, same content)
            p.write_bytes(p.read_bytes())
        touched, touched_read, _ = scrape_once(exporter)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    series = size  # bytes of exposition text
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.files} files + 1 kubeadm node; "
          f"{series / 1e6:.1f} MB of metrics text per scrape")
    print(f"cold scrape   {cold_plain:7.3f}s  (with tracemalloc: {cold:.3f}s; {cold_read} files read)   "
          f"goal <= {COLD_GOAL_S}s -> {'meets' if cold_plain <= COLD_GOAL_S else 'MISSES'} it")
    print(f"warm scrape   {statistics.median(warm_times):7.3f}s  median of {args.runs} "
          f"(min {min(warm_times):.3f}s, max {max(warm_times):.3f}s; {warm_reads} files read)   "
          f"goal <= {WARM_GOAL_S}s -> {'meets' if statistics.median(warm_times) <= WARM_GOAL_S else 'MISSES'} it")
    print(f"10 touched    {touched:7.3f}s  ({touched_read} files read)")
    print(f"memory        tracemalloc peak during the cold scrape {peak / 2**20:.1f} MiB; "
          f"process peak RSS {rss_mb:.0f} MiB")
    ok = cold_plain <= COLD_GOAL_S and statistics.median(warm_times) <= WARM_GOAL_S and warm_reads == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
