# -*- coding: utf-8 -*-
# Copyright: kubecert maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The options every kubecert.pki module takes (``kubecert.pki.kubecert``) and those of a gated
restart (``kubecert.pki.kubecert.restart``), as module_utils/kubecert.py builds their argument specs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
options:
  root:
    description: File-system root of the node (its C(/etc/kubernetes) lives below it).
    type: path
    default: /
  kubecert_bin:
    description:
      - Path of the kubecert executable on the managed node (the role C(kubecert.pki.rolling_renew)
        installs the single-file build there, checksum-verified).
      - The module runs it only if no other user can change it - resolved one component at a time,
        every directory on the way root's and not writable by group or others (sticky directories
        such as C(/tmp) excepted), every symlink followed root's, the file root's and not group- or
        world-writable - and fails naming the first that is not. It runs the resolved path, from C(/).
    type: path
    default: /usr/local/bin/kubecert
author:
  - kubecert maintainers (!UNKNOWN)
"""

    RESTART = r"""
options:
  gate_timeout:
    description: C(--gate-timeout) values, C(SECONDS) or C(COMPONENT=SECONDS).
    type: list
    elements: str
    default: []
  restart_command:
    description: C(--restart-command) values, C(COMPONENT=CMD) (e.g. C(kubelet=rc-service kubelet restart)).
    type: list
    elements: str
    default: []
  runtime:
    description: Container CLI for static pods (default detected).
    type: str
    choices: [crictl, docker]
  strategy:
    description: Restart the container, or move the manifest out and back.
    type: str
    choices: [container, manifest]
"""
