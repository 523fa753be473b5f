"""The service-account key pair's rotation across the control planes (``cluster ca rotate sa``,
``cluster ca rotate ... --include-sa``): :mod:`kubecert.sarotate`'s three stages, each a rolling pass
over the control planes, with **one** new key, made in memory here and given to every control plane
(an apiserver verifies the tokens of every other, so they must all trust, then sign with, the same
keys).

Resumable from the nodes themselves: the rotation's keys are read back from the control planes
(``sa-new.key`` at stage 1, ``sa.key`` and ``sa-old.key`` at stage 2), each node's stage from its own
files. The old key is dropped (stage 3) only once ``--sa-grace`` has passed since the **last** control
plane switched its signer: a token signed by any of them is honoured until then.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .. import sarotate as SR
from .. import x509ops
from ..errors import PKIError
from ..facts import gather
from ..layout import Layout
from .base import Connect, every_node


def control_planes(hosts: Sequence[Any]) -> List[Any]:
    return [h for h in hosts if h.role not in ("etcd", "worker")]


@dataclass(frozen=True)
class SaPair:
    """A cluster's service-account key rotation: the key every control plane signed with (its SPKI
    sha256) and the one they move to, in memory. ``retired_at``: the latest moment any control plane's
    leaving key signed a token (set for the stage that drops it)."""

    old_fp: str
    new_key: x509ops.PrivateKey
    grace: dt.timedelta = SR.DEFAULT_GRACE
    retired_at: Optional[dt.datetime] = None

    @property
    def new_fp(self) -> str:
        return x509ops.spki_sha256(self.new_key)


@dataclass(frozen=True)
class SaWhere:
    """What the control planes hold of the service-account key's rotation."""

    old_fp: str
    new_key: Optional[x509ops.PrivateKey]  # None: not rotating
    key_type: str
    stages: Dict[str, int] = field(default_factory=dict)  # node -> stage (-1: not this rotation's keys)
    old_retired: Optional[dt.datetime] = None  # latest stage-2 switch (the old key's last token)
    new_retired: Optional[dt.datetime] = None  # latest abort 2 -> 1 (the new key's last token)

    @property
    def stage(self) -> int:
        if self.new_key is None or not self.stages:
            return 0
        return min(self.stages.values())

    def pair(self, grace: dt.timedelta) -> SaPair:
        """The rotation in progress, or a new one: a new key of the old one's type."""
        new = self.new_key or x509ops.generate_key(self.key_type)
        return SaPair(self.old_fp, new, grace)

    def due(self, abort: bool, grace: dt.timedelta) -> Optional[dt.datetime]:
        """When the leaving key may be dropped (stage 3, or the end of an abort): the cluster's last
        switch plus the grace; None if it never signed."""
        retired = self.new_retired if abort else self.old_retired
        return None if retired is None else retired + grace


def discover(hosts: Sequence[Any], connect: Connect, strict: bool = True) -> SaWhere:
    """The rotation in progress on the control planes, and every one's stage. Refuses control planes
    that rotate to different keys, or sign with different keys when none rotates, and (``strict``)
    a control plane that cannot be reached: the stages to run, and whether a key exists already, can
    only be read from all of them."""
    keys: Dict[str, SR.Keys] = {}
    for h, conn in every_node(control_planes(hosts), connect, strict, "the service-account key's rotation"):
        fs = conn.fs()
        keys[h.name] = SR.read_keys(fs, Layout(gather(fs).pki_dir))
    if not keys:
        raise PKIError("no control plane could be reached to read its service-account keys")
    olds, news = set(), {}
    for k in keys.values():
        stage, _ = SR.stage_of(k)
        if stage == 1 and k.new is not None:
            olds.add(x509ops.spki_sha256(k.signing))
            news[x509ops.spki_sha256(k.new)] = k.new
        elif stage == 2 and k.old is not None:
            olds.add(x509ops.spki_sha256(k.old))
            news[x509ops.spki_sha256(k.signing)] = k.signing
    if len(news) > 1 or len(olds) > 1:
        raise PKIError("the control planes are rotating to different service-account keys; restore them from backups "
                       "(kubecert backups list) before going on")
    first = next(iter(keys.values()))
    key_type = x509ops.key_description(first.signing)
    if not news:
        signing = {x509ops.spki_sha256(k.signing) for k in keys.values()}
        if len(signing) > 1:
            raise PKIError(f"the control planes sign with {len(signing)} different service-account keys (tokens one "
                           "issues fail on the others): give them one sa.key/sa.pub first")
        return SaWhere(signing.pop(), None, key_type)
    old_fp = olds.pop()
    new_key = next(iter(news.values()))
    new_fp = x509ops.spki_sha256(new_key)
    stages = {n: SR.pair_stage(k, old_fp, new_fp) for n, k in keys.items()}
    old_retired = max((k.old_retired for n, k in keys.items() if stages[n] == 2 and k.old_retired), default=None)
    new_retired = max((k.new_retired for n, k in keys.items() if stages[n] == 1 and k.new_retired), default=None)
    return SaWhere(old_fp, new_key, key_type, stages, old_retired, new_retired)
