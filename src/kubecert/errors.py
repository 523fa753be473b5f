"""One error hierarchy. Messages name the file and, where there is one, the fix."""

from __future__ import annotations


class KubecertError(Exception):
    """Base of every error kubecert reports to the operator as one line."""

    exit_code = 3  # the CLI's exit status for it (see kubecert.cli)


class PKIError(KubecertError):
    """A certificate or key cannot be read, parsed or trusted."""


class StoreError(KubecertError):
    """The node's file system refused: missing, unreadable, escaping the root, write failed."""


class KubeconfigError(KubecertError):
    """A kubeconfig is malformed or lacks what kubecert needs."""


class ConfigError(KubecertError):
    """A flag, profile, inventory or kubeadm config value is wrong."""


class Interrupted(KubecertError):
    """Ctrl-C during a change; the message says what state the node is in."""

    exit_code = 130


class ValidityError(KubecertError):
    """A certificate would be issued that is not valid now, starts before its CA or lives too short."""
