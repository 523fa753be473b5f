#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecert maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kubecert_restart
short_description: Restart a node's Kubernetes components in order, each gated on its health
version_added: "0.1.0"
description:
  - Runs C(kubecert restart COMPONENT... --yes -o json) on the node - etcd, kube-apiserver,
    kube-controller-manager, kube-scheduler, kubelet, in that order, each followed by its health gate
    (etcd cluster health, apiserver C(/readyz) and served certificate, the healthz endpoints) - and
    stops at the first failure, which fails the task with kubecert's one-line error (RV(restarts) says
    which component failed which check).
  - Check mode runs C(kubecert restart --dry-run), which restarts nothing but makes the same choices and
    refusals as a real run (each component must be found on the node and have a way to be restarted;
    the restart options must parse; only the node's lock is not taken), and reports the restart as a
    change that would happen, with RV(plan).
options:
  components:
    description: Components to restart; empty means every component found on the node.
    type: list
    elements: str
    choices: [etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet]
    default: []
  restart_timeout:
    description: How long one restart command may take, in seconds.
    type: float
extends_documentation_fragment:
  - kubecert.pki.kubecert
  - kubecert.pki.kubecert.restart
attributes:
  check_mode:
    support: full
    description: Restarts nothing; checks what a real run would check and reports the restart as a change
      that would happen.
  diff_mode:
    support: none
    description: A restart changes no file.
"""

EXAMPLES = r"""
- name: Restart etcd and the apiserver, gated
  kubecert.pki.kubecert_restart:
    components: [etcd, kube-apiserver]
    gate_timeout: ["90", "etcd=180"]

- name: Every component, the kubelet through OpenRC
  kubecert.pki.kubecert_restart:
    restart_command: ["kubelet=rc-service kubelet restart"]
"""

RETURN = r"""
components:
  description: The components restarted, in order (in check mode, those that would be; every component
    found on the node when O(components) is empty).
  returned: always
  type: list
  elements: str
plan:
  description: Check mode only - per component, in order, how it would be restarted (C(component),
    C(adapter), e.g. C(static-pod/crictl/container) or C(systemd/kubelet), with the reason it was chosen).
  returned: in check mode
  type: list
  elements: dict
restarts:
  description: C(kubecert restart -o json)'s C(restarts) - per component, in order, the adapter, whether
    the restart and its health gate passed (C(ok)), and each gate check (name, target, ok, detail).
  returned: when not in check mode
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubecert.pki.plugins.module_utils.kubecert import (
    common_argument_spec, execute, json_document, last_line, restart_args, restart_argument_spec)


def main():
    spec = common_argument_spec()
    spec.update(
        components=dict(type="list", elements="str", default=[],
                        choices=["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"]),
        restart_timeout=dict(type="float"),
    )
    spec.update(restart_argument_spec())
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    result = dict(changed=True, components=p["components"])
    args = ["restart"] + p["components"] + ["--root", p["root"], "-o", "json"] + restart_args(p)
    if p["restart_timeout"] is not None:
        args += ["--restart-timeout", str(p["restart_timeout"])]
    dry_run = module.check_mode  # kubecert's dry run: the real run's choices and refusals, nothing restarted
    rc, out, err = execute(module, args + (["--dry-run"] if dry_run else ["--yes"]))
    doc = json_document(out)
    if doc is not None:
        result["components"] = doc.get("components", p["components"])
        if dry_run:
            result["plan"] = doc.get("plan", [])
        else:
            result["restarts"] = doc.get("restarts", [])
    if rc != 0 or doc is None:
        # with a document a restart sequence ran (components may be down: a change); without one,
        # kubecert refused before restarting anything
        result["changed"] = doc is not None and not dry_run
        module.fail_json(msg=last_line(err) or "kubecert restart%s exited with %d and printed no JSON"
                         % (" --dry-run" if dry_run else "", rc), rc=rc, stderr=err, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
