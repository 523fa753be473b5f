"""``kubecert exporter``: the node's certificates as Prometheus metrics, drop-in for x509-certificate-exporter.

* :mod:`.files`   certificates in PEM files and kubeconfigs, labelled as x509-certificate-exporter does,
  cached by (inode, size, mtime);
* :mod:`.nodefs`  the node root seen read-only, without private keys, cached (the audit runs on it);
* :mod:`.core`    one scrape (``Exporter.scrape(now)``) -> metric families, x509_* and kubecert_*;
* :mod:`.metrics` the families as data, rendered to text or to prometheus_client;
* :mod:`.server`  HTTP ``/metrics`` and the node_exporter textfile.
"""

from .core import Exporter, Options, Scrape

__all__ = ["Exporter", "Options", "Scrape"]
