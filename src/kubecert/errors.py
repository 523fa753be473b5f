"""One error hierarchy. Messages name the file and, where there is one, the fix."""

from __future__ import annotations


class KubecertError(Exception):
    """Base of every error kubecert reports to the operator as one line."""


class PKIError(KubecertError):
    """A certificate or key cannot be read, parsed or trusted."""


class StoreError(KubecertError):
    """The node's file system refused: missing, unreadable, escaping the root, write failed."""


class KubeconfigError(KubecertError):
    """A kubeconfig is malformed or lacks what kubecert needs."""


class ConfigError(KubecertError):
    """A flag, profile, inventory or kubeadm config value is wrong."""
