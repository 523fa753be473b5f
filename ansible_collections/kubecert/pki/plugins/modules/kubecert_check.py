#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kubecert maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kubecert_check
short_description: Inventory and audit the kubeadm PKI of a node
version_added: "0.1.0"
description:
  - Runs C(kubecert check -o json) on the managed node and returns its records as facts, the same
    records the CLI prints (kubeadm's C(CertificateExpirationInfo) field names plus kubecert's).
  - Never changes anything; always C(changed=false). Expiring or expired certificates and audit findings
    are reported, not failed on (see RV(expiring) and RV(findings)).
  - Needs the kubecert executable on the node (the role C(kubecert.pki.rolling_renew) installs the
    single-file build there).
options:
  warn:
    description: What counts as expiring (C(--warn) of the CLI), e.g. C(30d), C(12h).
    type: str
    default: 30d
  crit:
    description: What counts as critical (C(--crit) of the CLI).
    type: str
    default: 7d
notes:
  - Supports check mode (it changes nothing either way).
extends_documentation_fragment:
  - kubecert.pki.kubecert
attributes:
  check_mode:
    support: full
    description: Reads only; the same with or without check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
"""

EXAMPLES = r"""
- name: Read the node's certificates
  kubecert.pki.kubecert_check:
  register: pki

- name: Fail when something expires within 30 days
  ansible.builtin.assert:
    that: pki.expiring | length == 0
    fail_msg: "expiring on {{ inventory_hostname }}: {{ pki.expiring | join(', ') }}"

- name: A node's disk mounted elsewhere
  kubecert.pki.kubecert_check:
    root: /mnt/rescue
    warn: 60d
"""

RETURN = r"""
certificates:
  description: The records of C(kubecert check -o json) C(certificates[]) (name, expirationDate,
    residualTime in seconds, caName, externallyManaged, missing, path, serial, sha256Fingerprint, ...).
  returned: always
  type: list
  elements: dict
extra_certificates:
  description: C(extraCertificates[]) (the kubelet's client and serving certs, the sa key pair, ...).
  returned: always
  type: list
  elements: dict
certificate_authorities:
  description: C(certificateAuthorities[]).
  returned: always
  type: list
  elements: dict
findings:
  description: The audit findings (severity, file, message, fix).
  returned: always
  type: list
  elements: dict
expiring:
  description: Names of certificates and kubeconfigs that expire within O(warn) or expired.
  returned: always
  type: list
  elements: str
profile:
  description: The node's detected profile (stacked, external-etcd, etcd-host, worker, ...).
  returned: always
  type: dict
node:
  description: The node as kubecert sees it (root, node name, advertise address).
  returned: always
  type: dict
check_exit_code:
  description: The CLI's verdict, 0 fine, 1 warning, 2 critical.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kubecert.pki.plugins.module_utils.kubecert import check, common_argument_spec, records, seconds


def main():
    spec = common_argument_spec()
    spec.update(warn=dict(type="str", default="30d"), crit=dict(type="str", default="7d"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    warn = seconds(module, module.params["warn"], "warn")
    seconds(module, module.params["crit"], "crit")
    report = check(module, ["--warn", module.params["warn"], "--crit", module.params["crit"]])
    expiring = [r["name"] for r in records(report)
                if not r.get("missing") and r.get("expirationDate") and r.get("residualTime", 0) <= warn]
    module.exit_json(
        changed=False,
        certificates=report.get("certificates", []),
        extra_certificates=report.get("extraCertificates", []),
        certificate_authorities=report.get("certificateAuthorities", []),
        findings=report.get("findings", []),
        expiring=expiring,
        profile=report.get("profile", {}),
        node=report.get("node", {}),
        check_exit_code=report["exitCode"],
    )


if __name__ == "__main__":
    main()
