#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecert maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kubecert_renew
short_description: Renew a node's kubeadm certificates and kubeconfigs offline, only what is due
version_added: "0.1.0"
description:
  - Reads the node with C(kubecert check -o json) and picks among O(names) what expires within O(within)
    (or has expired). kubecert's own dry run (C(kubecert renew NAME... --dry-run --no-hooks -o json))
    then says what each would become; the module renews exactly those with C(kubecert renew NAME...
    --yes -o json), from the existing certificates, with kubecert's backup, journal and rollback, and
    reads the node back (it fails if the node does not hold the serials kubecert reports in
    RV(renewal)). A second run finds nothing due and changes nothing.
  - Not renewed, and returned in RV(not_renewable) with the reason - certificates whose CA key is not on
    the node (externally managed; a worker's kubelet client cert); and certificates whose CA expires
    within O(within) (a renewal is capped at the CA's NotAfter, so it would stay due and every run would
    renew it again), with a warning to renew or rotate the CA.
  - With O(restart=true) the renewal is followed by kubecert's ordered, gated restart of what loads the
    renewed files (C(renew --restart)); a gate that fails restores the backup (the task then fails,
    RV(rolled_back) says whether the node is back on its old certificates and healthy).
  - A failure after the renewal (kubecert's exit 6, a deploy or post hook failed) fails the task with
    C(changed=true) and RV(after) read back from the node.
  - Check mode returns the plan (RV(plan), with the NotAfter kubecert would give, capped at the CA's)
    from kubecert's dry run, so that a renewal the CLI would refuse fails here too; nothing is written
    and no hook runs.
  - Diff mode shows each renewed certificate's serial and NotAfter before and after.
options:
  names:
    description: kubeadm's names (apiserver, etcd-server, admin.conf, kubelet.conf, ...) or C(all).
    type: list
    elements: str
    default: [all]
  within:
    description: Renew what expires within this (or has expired), e.g. C(30d), C(12h); C(0) only what expired.
    type: str
    default: 30d
  days:
    description: Validity of the new certificates in days (capped at the CA's NotAfter by kubecert).
    type: int
    default: 365
  key:
    description: A new private key (as kubeadm) or keep the existing one.
    type: str
    choices: [new, reuse]
    default: new
  restart:
    description: Restart what loads the renewed files, in order, each gated; roll back on failure.
    type: bool
    default: false
extends_documentation_fragment:
  - kubecert.pki.kubecert
  - kubecert.pki.kubecert.restart
attributes:
  check_mode:
    support: full
    description: Returns the plan (RV(plan)) and runs C(kubecert renew --dry-run); writes nothing.
  diff_mode:
    support: full
    description: Serial and NotAfter of each renewed certificate, before and after.
"""

EXAMPLES = r"""
- name: Renew whatever expires within 30 days (idempotent)
  kubecert.pki.kubecert_renew:

- name: Renew and restart, gated; a failed gate rolls the node back and fails the task
  kubecert.pki.kubecert_renew:
    within: 60d
    days: 730
    restart: true
    gate_timeout: ["90", "etcd=180"]

- name: Only the apiserver's serving cert, keeping its key
  kubecert.pki.kubecert_renew:
    names: [apiserver]
    key: reuse

- name: What would be renewed
  kubecert.pki.kubecert_renew:
  check_mode: true
  diff: true
  register: plan
"""

RETURN = r"""
plan:
  description: What is (or in check mode would be) renewed, with the current serial, NotAfter and
    residual time, and the NotAfter kubecert aims for (now + O(days), before any cap at the CA's end).
  returned: always
  type: list
  elements: dict
renewed:
  description: Names whose certificate changed.
  returned: always
  type: list
  elements: str
not_renewable:
  description: Names due but not renewable on this node, each with the reason.
  returned: always
  type: list
  elements: dict
before:
  description: Serial and NotAfter per renewed name before the run.
  returned: always
  type: dict
after:
  description: Serial and NotAfter per renewed name after the run (read back with C(kubecert check));
    empty when nothing was due.
  returned: when not in check mode
  type: dict
rolled_back:
  description: With O(restart), whether a failed gate put the old certificates back and the node is
    healthy on them (kubecert's exit code 4); false on exit 5 (inspect the node).
  returned: on failure with restart, when kubecert exited 4 or 5 (a gate failed)
  type: bool
renewal:
  description: C(kubecert renew -o json) as it printed it (C(result) planned, renewed, nothing-to-renew,
    rolled-back or failed; C(items) with old and new serial and NotAfter; C(backup); C(restarts) with
    each gate's checks). In check mode that of C(--dry-run).
  returned: when kubecert ran and printed it
  type: dict
"""

import datetime

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubecert.pki.plugins.module_utils.kubecert import (
    RENEWABLE, check, common_argument_spec, execute, json_document, last_line, records, restart_args,
    restart_argument_spec, run, seconds, state)


def main():
    spec = common_argument_spec()
    spec.update(
        names=dict(type="list", elements="str", default=["all"]),
        within=dict(type="str", default="30d"),
        days=dict(type="int", default=365),
        key=dict(type="str", choices=["new", "reuse"], default="new"),
        restart=dict(type="bool", default=False),
    )
    spec.update(restart_argument_spec())
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    within = seconds(module, p["within"], "within")
    wanted = set(p["names"])
    unknown = sorted(wanted - set(RENEWABLE) - {"all"})
    if unknown:
        module.fail_json(msg="unknown name(s) %s; kubecert renews: all, %s" % (", ".join(unknown), ", ".join(RENEWABLE)))
    if p["days"] < 1:
        module.fail_json(msg="days must be at least 1")
    if p["days"] * 86400 <= within:
        module.fail_json(msg="days (%d) must be longer than within (%s): every renewed certificate would still be "
                             "due, and each run would renew it again" % (p["days"], p["within"]))

    report = check(module)
    due, skipped = [], []
    for rec in records(report):
        if "all" not in wanted and rec["name"] not in wanted:
            continue
        if rec.get("missing") or not rec.get("expirationDate"):
            continue
        if rec.get("residualTime", 0) > within:
            continue
        if rec.get("externallyManaged"):
            skipped.append(dict(name=rec["name"], reason="its CA key (%s) is not on this node" % rec.get("caName")))
            continue
        due.append(rec)

    result = dict(changed=False, plan=[], renewed=[], not_renewable=skipped, before={})
    if not module.check_mode:
        result["after"] = {}
    if not due:
        module.exit_json(**result)

    # kubecert's own dry run first (no hooks: nothing runs, nothing is written): what each would become
    names = [r["name"] for r in due]
    common = ["--root", p["root"], "--days", str(p["days"]), "--key", p["key"], "-o", "json"]
    # (with restart, its options too: the dry run refuses what the real run would)
    rehearse = ["--restart"] + restart_args(p) if p["restart"] else []
    rc, out, err = run(module, ["renew"] + names + common + ["--dry-run", "--no-hooks"] + rehearse)
    planned = document(module, rc, out, err)
    items = dict((i["name"], i) for i in planned.get("items", []))
    now = datetime.datetime.now(datetime.timezone.utc)
    go = []
    for rec in due:
        item = items.get(rec["name"])
        if item is None or item.get("action") != "renew":
            skipped.append(dict(name=rec["name"], reason=(item or {}).get("reason") or "kubecert would not renew it"))
        elif left(item.get("newNotAfter"), now) <= within:
            # capped at its CA's NotAfter: renewing cannot take it out of the window, and every run would
            # renew (and restart) again; the CA has to be renewed or rotated first
            why = "its CA expires %s, within %s: renew or rotate the CA first" % (item.get("newNotAfter"), p["within"])
            module.warn("%s: %s" % (rec["name"], why))
            skipped.append(dict(name=rec["name"], reason=why))
        else:
            go.append(rec)
    names = [r["name"] for r in go]
    plan = [dict(name=r["name"], path=r.get("path"), serial=r.get("serial"), not_after=r.get("expirationDate"),
                 residual_time=r.get("residualTime"), new_not_after=items[r["name"]].get("newNotAfter")) for r in go]
    before = dict((r["name"], state(r)) for r in go)
    result.update(plan=plan, before=before, not_renewable=skipped)
    if not names:
        module.exit_json(**result)
    if module.check_mode:
        result.update(changed=True, renewed=names, renewal=planned)
        if module._diff:
            result["diff"] = dict(before=before, after=dict(
                (n, dict(serial="(new)", not_after=items[n].get("newNotAfter"))) for n in names))
        module.exit_json(**result)

    args = ["renew"] + names + common + ["--yes"]
    if p["restart"]:
        args += ["--restart"] + restart_args(p)
    rc, out, err = execute(module, args)
    doc = document(module, rc, out, err, required=rc == 0)
    result["renewal"] = doc
    if doc is not None and doc.get("result") in ("renewed", "rolled-back", "failed"):
        # read back from disk: what kubecert says it wrote must be what the node now holds (after a
        # rollback: the old serials again)
        after_report = check(module)
        after = dict((r["name"], state(r)) for r in records(after_report) if r["name"] in before)
        renewed = [n for n in names if after.get(n, {}).get("serial") != before[n]["serial"]]
        result.update(changed=bool(renewed), renewed=renewed, after=after)
        if module._diff:
            result["diff"] = dict(before=dict((n, before[n]) for n in renewed),
                                  after=dict((n, after[n]) for n in renewed))
        written = dict((i["name"], i.get("newSerial")) for i in doc.get("items", []) if i.get("action") == "renew")
        if rc == 0:
            for n in names:
                if n in written and after.get(n, {}).get("serial") != written[n]:
                    module.fail_json(msg="%s: kubecert renewed it to serial %s but the node holds %s" % (
                        n, written[n], after.get(n, {}).get("serial")), **result)
    if rc != 0:
        # exit 6: renewed (and restarted) but a hook failed, so changed may well be true here
        fail = dict(result, msg=last_line(err) or last_line(out) or "kubecert renew exited with %d" % rc, rc=rc,
                    stderr=err)
        if p["restart"] and rc in (4, 5):
            fail["rolled_back"] = rc == 4
        module.fail_json(**fail)
    module.exit_json(**result)


def left(when, now):
    """Seconds from now to an RFC 3339 time of kubecert's (a long way off when absent)."""
    if not when:
        return float("inf")
    t = datetime.datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return (t - now).total_seconds()


def document(module, rc, out, err, required=True):
    """The ``renew -o json`` document on stdout (None when absent and not required: a failure before it)."""
    doc = json_document(out)
    if doc is None and required:
        module.fail_json(msg="kubecert renew -o json printed no JSON (is %s kubecert 0.1.0 or later?)"
                         % module.params["kubecert_bin"], rc=rc, stdout=out, stderr=err)
    return doc


if __name__ == "__main__":
    main()
