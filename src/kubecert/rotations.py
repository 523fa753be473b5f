"""Several rotations' stage on one node in one transaction (``cluster ca rotate all``,
``--include-sa``): each CA's plan (:mod:`kubecert.rotate`) and the service-account key's
(:mod:`kubecert.sarotate`) for the same stage, merged, so a node is restarted once per stage rather
than once per CA. Their files are disjoint (each CA's bundle, side files and the leaves it signs;
sa.key/sa.pub); a file two of them would write is refused rather than written twice.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, List, Optional, Sequence

from . import renew as R
from . import rotate as RT
from . import sarotate as SR
from .errors import KubecertError
from .facts import detect_profile, gather
from .store import NodeFS
from .store.txn import Backup, Fault, Transaction


def plan(fs: NodeFS, names: object = (), *, now: dt.datetime, stage: int, givens: Sequence[RT.Given] = (),
         sa: Optional[Any] = None, abort: bool = False, profile: Any = None, **kwargs: Any) -> R.Plan:
    """Stage ``stage`` (``abort``: back to it) of every CA rotation in ``givens`` and, with ``sa`` (a
    :class:`kubecert.cluster.sarotate.SaPair`), of the service-account key's, on this node."""
    profile = profile or detect_profile(fs, gather(fs))
    plans: List[R.Plan] = [RT.plan(fs, [g.name], now=now, given=g, stage=stage, abort=abort, profile=profile, **kwargs)
                           for g in givens]
    if sa is not None:
        plans.append(SR.plan(fs, [SR.NAME], now=now, abort=abort, profile=profile, target=stage, old_fp=sa.old_fp,
                             new_key=sa.new_key, grace=sa.grace, retired_at=sa.retired_at, clock=kwargs.get("clock")))
    return merge(fs, now, profile, plans)


def merge(fs: NodeFS, now: dt.datetime, profile: Any, plans: Sequence[R.Plan]) -> R.Plan:
    seen: set[str] = set()
    for p in plans:
        for w in p.writes:
            if w.path in seen:
                raise KubecertError(f"{fs.display(w.path)}: two rotations would write it; run them one at a time "
                                    "(nothing was changed)")
            seen.add(w.path)
    return R.Plan(fs.root, now, max((p.days for p in plans), default=0), profile,
                  tuple(i for p in plans for i in p.items), tuple(w for p in plans for w in p.writes),
                  tuple(x for p in plans for x in p.warnings))


def apply(fs: NodeFS, p: R.Plan, *, fault: Optional[Fault] = None) -> Backup:
    """Put the stage's files in place (all or nothing) and append to the audit log. Hold the lock."""
    records = [{"action": SR.ACTION, "name": i.name, "file": i.path, "note": i.reason,
                "sha256PublicKey": i.new_fingerprint} if i.name == SR.NAME else
               {"action": RT.ACTION, "name": i.name, "file": i.path, "note": i.reason,
                "newSerial": None if i.new_serial is None else format(i.new_serial, "X"),
                "sha256Fingerprint": i.new_fingerprint} for i in p.renewed]
    action = RT.ACTION if any(i.name != SR.NAME for i in p.renewed) else SR.ACTION
    return Transaction(fs, now=p.now, action=action, fault=fault).apply(p.writes, records)
