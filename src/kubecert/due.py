"""``renew --if-expiring-within``: whether today's run has anything to do (the renewal timer runs it
daily), read-only and before any lock, so a day with nothing due leaves the node byte-identical."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from .errors import ConfigError
from .renew import Plan, PlanItem, plan
from .store import NodeFS


@dataclass(frozen=True)
class Due:
    """What ``renew --if-expiring-within`` found, read-only and before any lock: whether to renew."""

    plan: Plan  # the items due within the window (renew) and the others (skip)
    triggers: Tuple[PlanItem, ...]  # due items a renewal would improve: renew when there is one
    futile: Tuple[PlanItem, ...]  # due items a renewal cannot push further (capped at their CA's NotAfter)
    pending: bool  # an interrupted change waits: the run must go on to finish it

    @property
    def go(self) -> bool:
        return bool(self.triggers) or self.pending


def due(fs: NodeFS, names: Sequence[str], *, now: dt.datetime, within: dt.timedelta,
        **kwargs: Any) -> Due:
    """Whether anything among ``names`` expires within ``within`` (or has expired, or is not valid yet)
    and can be renewed on this node. Writes nothing and takes no lock (a daily no-op run leaves the
    node's tree byte-identical). A due item whose renewal would not move its NotAfter (its CA expires
    first) does not trigger a renewal: it would be due again the next day, for ever."""
    from .store.restarts import pending_restarts
    from .store.txn import pending

    kwargs = {k: v for k, v in kwargs.items() if k not in ("within", "kubelet_within", "due_only")}
    p = plan(fs, names, now=now, within=within, due_only=True, **kwargs)
    triggers: List[PlanItem] = []
    futile: List[PlanItem] = []
    for i in p.renewed:
        gain = (i.new_not_after is not None and i.old_not_after is not None
                and i.new_not_after - i.old_not_after > dt.timedelta(days=1))
        (triggers if gain or i.old_not_after is None else futile).append(i)
    return Due(p, tuple(triggers), tuple(futile), pending(fs) is not None or bool(pending_restarts(fs)))


def check_window(within: dt.timedelta, days: int) -> None:
    """``--if-expiring-within`` must be shorter than the new certificates' life: else every renewal
    would be due again at once, and a daily timer would renew (and restart) every day."""
    if within >= dt.timedelta(days=days):
        raise ConfigError(f"--if-expiring-within ({within.days}d) must be shorter than --days ({days}): "
                          "renewed certificates would be due again at once; nothing was changed")
