"""``kubecert renew -o json``: a renewal's plan and what became of it, as data.

Serials are hex as ``check -o json`` writes them (compare them directly), times RFC 3339 UTC. The
``result`` says what happened: ``planned`` (--dry-run), ``renewed``, ``nothing-to-renew``, ``not-due``
(--if-expiring-within found nothing due), ``rolled-back`` (a gate failed; restored and healthy on the
old certificates: exit 4) or ``failed`` (exit 5: inspect the node).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from .structured import rfc3339, serial_hex

KIND = "Renewal"


def item_data(i: Any) -> Dict[str, Any]:
    """One renew.PlanItem. In a dry run ``newSerial`` and ``newNotAfter`` are those of a certificate
    that was built and not written: the real run issues another serial (and the NotAfter of its own now)."""
    return {"name": i.name, "action": i.action, "reason": i.reason, "path": i.path,
            "oldSerial": serial_hex(i.old_serial), "newSerial": serial_hex(i.new_serial),
            "oldNotAfter": rfc3339(i.old_not_after), "newNotAfter": rfc3339(i.new_not_after),
            "newSha256Fingerprint": i.new_fingerprint, "key": i.key, "capped": i.capped,
            "differences": list(i.differences), "components": list(i.components)}


def steps_data(steps: Sequence[Any]) -> List[Dict[str, Any]]:
    """node.restart.Step's: each restart and its gate's checks."""
    out = []
    for st in steps:
        gate = None if st.gate is None else {
            "ok": st.gate.ok, "seconds": round(st.gate.seconds, 3), "attempts": st.gate.attempts,
            "checks": [{"name": c.name, "target": c.target, "ok": c.ok, "detail": c.detail} for c in st.gate.checks]}
        out.append({"component": st.component, "adapter": st.adapter, "reason": st.reason, "ok": st.ok,
                    "restart": {"ok": st.restart.ok, "seconds": round(st.restart.seconds, 3),
                                "detail": st.restart.detail},
                    "gate": gate})
    return out


def renewal_data(result: str, plan: Any = None, *, dry_run: bool = False, backup: Any = None,
                 steps: Sequence[Any] = (), after_rollback: Optional[Sequence[Any]] = None,
                 recovered: Optional[str] = None, exit_code: int = 0,
                 display: Callable[[str], str] = str) -> Dict[str, Any]:
    """The whole document; ``plan`` is a renew.Plan (None when no plan was made); ``display`` turns a
    node path into the path shown (the store's display: ROOT/etc/kubernetes/...), as the items' paths are."""
    d: Dict[str, Any] = {"kind": KIND, "result": result, "dryRun": dry_run}
    if plan is not None:
        d.update({"root": plan.root, "now": rfc3339(plan.now), "days": plan.days, "profile": plan.profile.name,
                  "items": [item_data(i) for i in plan.items],
                  "renewed": [i.name for i in plan.renewed],
                  "stranded": [i.name for i in plan.stranded],
                  "writes": [display(w.path) for w in plan.writes],
                  "components": list(plan.components),
                  "warnings": list(plan.warnings)})
    d["backup"] = None if backup is None else backup.id
    d["recovered"] = recovered
    d["restarts"] = steps_data(steps)
    d["restartsAfterRollback"] = None if after_rollback is None else steps_data(after_rollback)
    d["exitCode"] = exit_code
    return d
