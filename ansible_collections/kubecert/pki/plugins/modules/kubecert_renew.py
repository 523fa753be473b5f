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
  - Reads the node with C(kubecert check -o json), picks among O(names) what expires within O(within)
    (or has expired), and renews exactly those with C(kubecert renew NAME... --yes -o json), from the
    existing certificates, with kubecert's backup, journal and rollback; then reads the node back and
    fails if it does not hold the serials kubecert reports (RV(renewal)). A second run finds nothing due
    and changes nothing.
  - Certificates whose CA key is not on the node (externally managed; a worker's kubelet client cert)
    are not renewed here; they are returned in RV(not_renewable) with the reason.
  - With O(restart=true) the renewal is followed by kubecert's ordered, gated restart of what loads the
    renewed files (C(renew --restart)); a gate that fails restores the backup (the task then fails,
    RV(rolled_back) says whether the node is back on its old certificates and healthy).
  - Check mode returns the plan (RV(plan), with the NotAfter kubecert would give, capped at the CA's)
    from C(kubecert renew --dry-run -o json), so that a renewal the CLI would refuse fails here too;
    nothing is written.
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
  description: Serial and NotAfter per renewed name after the run (read back with C(kubecert check)).
  returned: when not in check mode
  type: dict
rolled_back:
  description: With O(restart), whether a failed gate put the old certificates back and the node is
    healthy on them (kubecert's exit code 4); false on exit 5 (inspect the node).
  returned: on failure with restart
  type: bool
renewal:
  description: C(kubecert renew -o json) as it printed it (C(result) planned, renewed, nothing-to-renew,
    rolled-back or failed; C(items) with old and new serial and NotAfter; C(backup); C(restarts) with
    each gate's checks). In check mode that of C(--dry-run).
  returned: when kubecert ran and printed it
  type: dict
"""

import datetime
import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubecert.pki.plugins.module_utils.kubecert import (
    RENEWABLE, check, common_argument_spec, last_line, records, restart_args, restart_argument_spec, run, seconds,
    state)


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

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    target = (now + datetime.timedelta(days=p["days"])).strftime("%Y-%m-%dT%H:%M:%SZ")
    plan = [dict(name=r["name"], path=r.get("path"), serial=r.get("serial"), not_after=r.get("expirationDate"),
                 residual_time=r.get("residualTime"), new_not_after=target) for r in due]
    before = dict((r["name"], state(r)) for r in due)
    result = dict(changed=False, plan=plan, renewed=[], not_renewable=skipped, before=before)
    if not due:
        module.exit_json(**result)

    names = [r["name"] for r in due]
    args = ["renew"] + names + ["--root", p["root"], "--days", str(p["days"]), "--key", p["key"], "-o", "json"]
    if module.check_mode:
        rc, out, err = run(module, args + ["--dry-run"])
        doc = document(module, rc, out, err)
        planned = dict((i["name"], i) for i in doc.get("items", []) if i.get("action") == "renew")
        for item in plan:  # the NotAfter kubecert would give (capped at the CA's), not an estimate
            item["new_not_after"] = planned.get(item["name"], {}).get("newNotAfter", item["new_not_after"])
        result.update(changed=True, renewed=names, renewal=doc)
        if module._diff:
            result["diff"] = dict(before=before, after=dict(
                (n, dict(serial="(new)", not_after=planned.get(n, {}).get("newNotAfter", target))) for n in names))
        module.exit_json(**result)

    if p["restart"]:
        args += ["--restart"] + restart_args(p)
    rc, out, err = module.run_command([p["kubecert_bin"]] + args + ["--yes"])
    doc = document(module, rc, out, err, required=rc == 0)
    result["renewal"] = doc
    if rc != 0:
        fail = dict(result, msg=last_line(err) or last_line(out) or "kubecert renew exited with %d" % rc, rc=rc,
                    stderr=err)
        if p["restart"]:
            fail["rolled_back"] = rc == 4
        module.fail_json(**fail)

    # read back from disk (what kubecert says it wrote must be what the node now holds)
    after_report = check(module)
    after = dict((r["name"], state(r)) for r in records(after_report) if r["name"] in before)
    written = dict((i["name"], i.get("newSerial")) for i in doc.get("items", []) if i.get("action") == "renew")
    for n in names:
        if n in written and after.get(n, {}).get("serial") != written[n]:
            module.fail_json(msg="%s: kubecert renewed it to serial %s but the node holds %s" % (
                n, written[n], after.get(n, {}).get("serial")), **result)
    renewed = [n for n in names if after.get(n, {}).get("serial") != before[n]["serial"]]
    result.update(changed=bool(renewed), renewed=renewed, after=after)
    if module._diff:
        result["diff"] = dict(before=dict((n, before[n]) for n in renewed), after=dict((n, after[n]) for n in renewed))
    module.exit_json(**result)


def document(module, rc, out, err, required=True):
    """The ``renew -o json`` document on stdout (None when absent and not required: a failure before it)."""
    try:
        return json.loads(out)
    except ValueError:
        if not required:
            return None
        module.fail_json(msg="kubecert renew -o json printed no JSON (is %s kubecert 0.1.0 or later?)"
                         % module.params["kubecert_bin"], rc=rc, stdout=out, stderr=err)


if __name__ == "__main__":
    main()
