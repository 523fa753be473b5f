"""`kubecert exporter`: serve the node's certificates as Prometheus metrics, or write them once for
node_exporter's textfile collector."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Optional, Tuple

import click

from .. import spec
from .common import handle_errors, now_option, parse_duration, parse_now, profile_option, root_option


@click.command()
@root_option
@click.option("--listen", default="127.0.0.1:9793", show_default=True, metavar="HOST:PORT",
              help="Where to serve /metrics (0.0.0.0:9793 for every address; x509-certificate-exporter's port).")
@click.option("--interval", "interval_text", default="60s", show_default=True, metavar="DURATION",
              help="Scrape the files again at most this often (0s: on every request); requests in between "
                   "get the last scrape.")
@click.option("--textfile", metavar="DIR",
              help="Write DIR/kubecert.prom once (atomically) for node_exporter's textfile collector, then exit.")
@click.option("--watch-file", "-f", "watch_files", multiple=True, metavar="PATH",
              help="Also export this PEM file (a glob is expanded on every scrape; repeatable).")
@click.option("--watch-dir", "-d", "watch_dirs", multiple=True, metavar="DIR",
              help="Also export every certificate file in DIR (not recursive; *.key skipped; repeatable).")
@click.option("--watch-kubeconf", "-k", "watch_kubeconfs", multiple=True, metavar="PATH",
              help="Also export the certificates embedded in (or named by) this kubeconfig (repeatable).")
@click.option("--kubeadm/--no-kubeadm", default=True, show_default=True,
              help="Inventory and audit the kubeadm PKI under --root (off: only the --watch-* files).")
@click.option("--expose-relative-metrics", is_flag=True,
              help="Also x509_cert_expires_in_seconds and x509_cert_valid_since_seconds.")
@click.option("--expose-per-cert-error-metrics", is_flag=True,
              help="Also x509_cert_error: 1 per file that could not be read or parsed, 0 otherwise.")
@click.option("--trim-path-components", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Remove this many leading components from the filepath label.")
@click.option("--ca-warn", "ca_warn_text", default="365d", show_default=True,
              help="A CA that expires within this is an audit finding (ca-expiring).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@profile_option
@now_option
@handle_errors
def exporter(root: str, listen: str, interval_text: str, textfile: Optional[str], watch_files: Tuple[str, ...],
             watch_dirs: Tuple[str, ...], watch_kubeconfs: Tuple[str, ...], kubeadm: bool,
             expose_relative_metrics: bool, expose_per_cert_error_metrics: bool, trim_path_components: int,
             ca_warn_text: str, log_level: str, profile_text: Optional[str], now_text: Optional[str]) -> None:
    """Prometheus metrics for the node's certificates (drop-in for x509-certificate-exporter).

    \b
    Reads certificates only (never a private key), writes nothing under --root, and keeps serving
    when a file is unreadable or corrupt (x509_read_errors, one log line). --now pins the clock.
    """
    from ..exporter import Exporter, Options
    from ..exporter.server import Cached, make_http_server, parse_listen, write_textfile

    interval = parse_duration(interval_text).total_seconds()
    ca_warn = parse_duration(ca_warn_text)
    parse_now(now_text)  # a bad --now or --listen is a usage error before anything starts
    host, port = parse_listen(listen)

    def clock() -> Any:
        return parse_now(now_text)

    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s kubecert exporter %(levelname)s: %(message)s")
    options = Options(root=root, kubeadm=kubeadm, profile=spec.parse_profile(profile_text) if profile_text else None,
                      watch_files=watch_files, watch_dirs=watch_dirs, watch_kubeconfs=watch_kubeconfs,
                      trim_path_components=trim_path_components, relative_metrics=expose_relative_metrics,
                      per_cert_errors=expose_per_cert_error_metrics, ca_warn=ca_warn)
    ex = Exporter(options)
    if textfile:
        path, errors = write_textfile(ex, clock(), textfile)
        click.echo(f"wrote {path}" + (f" ({errors} read error(s); see above)" if errors else ""), err=True)
        return
    server = make_http_server(Cached(ex, clock, interval), host, port)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    logging.getLogger("kubecert.exporter").info("serving http://%s:%d/metrics (root %s)", shown, bound_port, root)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logging.getLogger("kubecert.exporter").info("stopped")
    finally:
        server.server_close()
