# -*- coding: utf-8 -*-
# Copyright: kubecert maintainers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""What the kubecert.pki modules share: running the kubecert executable on the managed node (only one
that no other user can change), reading its ``-o json`` output (never its text), durations as the CLI
writes them, and the certificate records of ``kubecert check -o json``."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import stat

DEFAULT_BIN = "/usr/local/bin/kubecert"

# kubeadm's names that `kubecert renew` takes (the CLI's choices, without `all`)
RENEWABLE = (
    "apiserver", "apiserver-kubelet-client", "front-proxy-client", "etcd-server", "etcd-peer",
    "etcd-healthcheck-client", "apiserver-etcd-client", "admin.conf", "super-admin.conf",
    "controller-manager.conf", "scheduler.conf", "kubelet.conf", "kubelet-server",
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def common_argument_spec():
    """The options of doc fragment kubecert.pki.kubecert."""
    return dict(
        root=dict(type="path", default="/"),
        kubecert_bin=dict(type="path", default=DEFAULT_BIN),
    )


def restart_argument_spec():
    """The options of doc fragment kubecert.pki.kubecert.restart."""
    return dict(
        gate_timeout=dict(type="list", elements="str", default=[]),
        restart_command=dict(type="list", elements="str", default=[]),
        runtime=dict(type="str", choices=["crictl", "docker"]),
        strategy=dict(type="str", choices=["container", "manifest"]),
    )


def restart_args(params):
    """Those options as the CLI's arguments (``renew --restart`` and ``restart`` take the same)."""
    args = []
    for value in params["gate_timeout"]:
        args += ["--gate-timeout", value]
    for value in params["restart_command"]:
        args += ["--restart-command", value]
    if params["runtime"]:
        args += ["--runtime", params["runtime"]]
    if params["strategy"]:
        args += ["--strategy", params["strategy"]]
    return args


def seconds(module, value, option):
    """``30d`` / ``12h`` / ``90m`` / ``3600s`` / ``2w`` (a bare number is days) -> seconds."""
    m = re.match(r"^\s*([0-9]{1,9})\s*([smhdw]?)\s*$", str(value))
    if m is None:
        module.fail_json(msg="%s: %r is not a duration such as 30d, 12h or 90m" % (option, value))
    return int(m.group(1)) * _UNITS[m.group(2) or "d"]


def last_line(text):
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _trusted(st):
    return st.st_uid in (0, os.geteuid())  # root, or the user the module runs as


def _dir_problem(path, st):
    if not stat.S_ISDIR(st.st_mode):
        return "%s is not a directory" % path
    if not _trusted(st):
        return "directory %s is owned by uid %d, not root" % (path, st.st_uid)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return "directory %s is writable by group or others" % path
    return None


def resolve_trusted(path):
    """``path`` (absolute) resolved the way the kernel does, one component at a time, checking everything
    it passes through -> (real path, None) or (None, why another user could change what it names).
    Every directory must be root's (or the module user's) and not writable by group or others (a sticky
    one such as /tmp may be: others cannot replace root's entries in it), every symlink followed root's,
    and the file itself a regular file, root's, not group/world-writable. Run the real path it returns:
    then no link is followed again. kubecert's own hook check (hooks.py) walks the same way."""
    if not os.path.isabs(path):
        return None, "not an absolute path"
    parts = [p for p in path.split("/") if p]
    current, links = "/", 0
    st = os.lstat("/")
    why = _dir_problem("/", st)
    while parts and why is None:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        try:
            st = os.lstat(entry)
        except OSError as exc:
            return None, "%s: %s" % (entry, exc.strerror)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if not _trusted(st):
                why = "symlink %s is owned by uid %d, not root" % (entry, st.st_uid)
            elif links > 40:
                why = "%s: too many levels of symbolic links" % path
            else:
                target = os.readlink(entry)
                current = "/" if target.startswith("/") else current
                parts[:0] = [p for p in target.split("/") if p]
            continue
        current = entry
        if parts:
            why = _dir_problem(current, st)
    if why is not None:
        return None, why
    st = os.lstat(current)  # what the path ends at (after a final "..", not the entry before it)
    if not stat.S_ISREG(st.st_mode):
        return None, "%s is not a regular file" % current
    if not _trusted(st) or st.st_mode & 0o022:
        return None, "%s is owned by uid %d with mode %04o (must be root's, not group/world-writable)" % (
            current, st.st_uid, stat.S_IMODE(st.st_mode))
    return current, None


def execute(module, args):
    """``kubecert ARGS`` on the node -> (rc, stdout, stderr), run from / by its checked real path; fails
    the task, running nothing, when another user could change the executable (the modules run as root)."""
    real, why = resolve_trusted(module.params["kubecert_bin"])
    if why is not None:
        module.fail_json(msg="refusing to run %s: %s" % (module.params["kubecert_bin"], why), changed=False)
    return module.run_command([real] + list(args), cwd="/")


def run(module, args, ok=(0,)):
    """``kubecert ARGS`` on the node; on an exit code not in ``ok``, fail with the CLI's one-line error."""
    cmd = [module.params["kubecert_bin"]] + list(args)
    rc, out, err = execute(module, args)
    if rc not in ok:
        module.fail_json(msg=last_line(err) or last_line(out) or "kubecert exited with %d" % rc,
                         rc=rc, cmd=cmd, stdout=out, stderr=err)
    return rc, out, err


def json_document(out):
    """The document kubecert printed on stdout with ``-o json``, or None (it failed before printing one)."""
    try:
        return json.loads(out)
    except ValueError:
        return None


def check(module, extra=()):
    """The node's report (``kubecert check -o json``): exit 0, 1 and 2 are verdicts, 3 is an error."""
    rc, out, err = run(module, ["check", "--root", module.params["root"], "-o", "json"] + list(extra), ok=(0, 1, 2))
    report = json_document(out)
    if report is None:
        module.fail_json(msg="kubecert check -o json printed no JSON (is %s kubecert?)" % module.params["kubecert_bin"],
                         rc=rc, stdout=out, stderr=err)
    report["exitCode"] = rc
    return report


def records(report):
    """Every certificate and kubeconfig of the report that ``kubecert renew`` knows by name."""
    found = []
    for rec in report.get("certificates", []) + report.get("extraCertificates", []):
        if rec.get("name") in RENEWABLE and rec.get("kind") != "keypair":
            found.append(rec)
    return found


def state(rec):
    """What a diff shows of a certificate: its serial and NotAfter."""
    return {"serial": rec.get("serial"), "not_after": rec.get("expirationDate")}
