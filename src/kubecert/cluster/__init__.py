"""Cluster mode: every node of an inventory, over SSH, from the operator's machine.

:mod:`.check` scans and audits all nodes; :mod:`.renew` rolls renewals out (etcd hosts, control
planes, then workers in batches, :mod:`.workers`); :mod:`.recover` brings a cluster whose
certificates already expired back with a cold start. :mod:`.base` holds what they share.
"""

from .base import (
                   GATED,
                   Conn,
                   Connect,
                   HostLike,
                   LocalConn,
                   Progress,
                   RunState,
                   Signers,
                   collect_signers,
                   inventory_digest,
                   is_etcd_member,
                   local_connect,
)
from .check import ClusterReport, NodeData, cluster_check, cross_audit
from .renew import cluster_healthy, cluster_renew, rollout_order

__all__ = ["GATED", "ClusterReport", "ClusterRun", "Conn", "Connect", "HostLike", "LocalConn", "NodeData", "NodeRun",
           "Progress", "RunState", "Signers", "cluster_check", "cluster_healthy", "cluster_renew", "collect_signers",
           "cross_audit", "inventory_digest", "is_etcd_member", "local_connect", "rollout_order"]
