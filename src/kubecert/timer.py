"""Renewal on a timer: a systemd service + timer, or a cron.d entry, that runs
``kubecert renew all --if-expiring-within 30d --restart --yes`` every day (or on a staggered day).

Everything is written through the node file-system interface (:class:`kubecert.store.NodeFS`), so the
same code installs on a local root and, over SFTP, on every node of a cluster. Files are written
atomically, 0644, and carry a marker line: kubecert overwrites or removes only files that have it
(``force`` overrides for install), and ``remove`` deletes exactly those files (plus the
``timers.target.wants`` link that ``systemctl enable`` made to our timer).

Which scheduler (:func:`detect`): systemd when ``ROOT/run/systemd/system`` exists (systemd is PID 1:
sd_booted's test) or the systemd binary is installed under ROOT (``/usr/lib/systemd/systemd`` or
``/lib/systemd/systemd``: an offline root of a systemd distribution); otherwise cron when
``ROOT/etc/cron.d`` exists; otherwise nothing is chosen and the caller must say which.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, StoreError
from .store import NodeFS

UNIT_DIR = "/etc/systemd/system"
SERVICE = f"{UNIT_DIR}/kubecert-renew.service"
TIMER = f"{UNIT_DIR}/kubecert-renew.timer"
WANTS_LINK = f"{UNIT_DIR}/timers.target.wants/kubecert-renew.timer"
CRON_DIR = "/etc/cron.d"
CRON = f"{CRON_DIR}/kubecert"  # no dot in the name: Debian's cron ignores cron.d files with one
SYSTEMD_FILES = (SERVICE, TIMER)
MARKER = "# kubecert-managed: written by `kubecert timer install`; `kubecert timer remove` deletes it"
KINDS = ("systemd", "cron")
ENABLE_ADVICE = "systemctl daemon-reload && systemctl enable --now kubecert-renew.timer"
DISABLE_ADVICE = "systemctl disable --now kubecert-renew.timer"
DEFAULT_DELAY = 3600  # RandomizedDelaySec: spread a fleet's runs over an hour
DEFAULT_HOUR = 3  # staggered schedules start at 03:00 local time, the delay keeps them within the day
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_MONTH_DAY = 28  # every month has it

_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./+:=@,-]+$")
_CAL_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_SIMPLE_CAL = re.compile(r"^(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun) )?\*-\*-(\*|\d{1,2}) " + _CAL_TIME + "$")
_SHORTHANDS = {"daily": "0 0 * * *", "weekly": "0 0 * * 1", "monthly": "0 0 1 * *"}


@dataclass(frozen=True)
class Schedule:
    """When the renewal runs: a systemd OnCalendar expression and the same moment for cron."""

    on_calendar: str = "daily"
    randomized_delay: int = DEFAULT_DELAY  # seconds (systemd only; cron gets a fixed minute instead)
    cron: str = "0 0 * * *"

    @property
    def label(self) -> str:
        return self.on_calendar


def cron_of(on_calendar: str, spread_key: str = "") -> str:
    """The cron schedule of an OnCalendar expression kubecert can translate: ``daily``, ``weekly``,
    ``monthly``, ``[Mon] *-*-* HH:MM[:SS]`` and ``*-*-DD HH:MM[:SS]``. ``spread_key`` (a host name)
    picks a stable minute within the first hour of ``daily``/``weekly``/``monthly``, in place of
    systemd's random delay. Others: ConfigError."""
    expr = " ".join(on_calendar.split())
    if expr in _SHORTHANDS:
        minute = int(hashlib.sha256(spread_key.encode()).hexdigest(), 16) % 60 if spread_key else 0
        return f"{minute} " + _SHORTHANDS[expr].split(" ", 1)[1]
    m = _SIMPLE_CAL.match(expr)
    if not m:
        raise ConfigError(f"--on-calendar {on_calendar!r}: cron cannot express it; use daily, weekly, monthly, "
                          "'Mon *-*-* 03:00' or '*-*-15 03:00' (or a systemd timer)")
    weekday, day, hour, minute = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    if hour > 23 or minute > 59 or (day != "*" and not 1 <= int(day) <= 31):
        raise ConfigError(f"--on-calendar {on_calendar!r}: no such time")
    dow = "*" if weekday is None else str(WEEKDAYS.index(weekday) + 1)
    return f"{minute} {hour} {'*' if day == '*' else int(day)} * {dow}"


def schedule(on_calendar: str = "daily", *, randomized_delay: int = DEFAULT_DELAY, spread_key: str = "",
             kind: str = "systemd") -> Schedule:
    """A schedule from an OnCalendar expression (its cron form is needed only for ``kind`` cron)."""
    text = " ".join(on_calendar.split())
    if not text or any(not c.isprintable() for c in on_calendar) or len(text) > 200:
        raise ConfigError(f"--on-calendar {on_calendar!r}: not a calendar expression")
    if kind == "cron":
        cron = cron_of(text, spread_key)
    else:
        try:
            cron = cron_of(text, spread_key)
        except ConfigError:
            cron = ""
    return Schedule(text, randomized_delay, cron)


def stagger(hosts: Sequence[Tuple[str, str]], *, hour: int = DEFAULT_HOUR,
            delay: int = DEFAULT_DELAY) -> Dict[str, Schedule]:
    """Per host (name, role): control planes and etcd hosts each on a day of their own, so that no two
    renew (and restart their etcd member or apiserver) on the same day: distinct weekdays for up to 7,
    distinct days of the month (1-28) for up to 28, refused beyond. Workers share a daily schedule
    (their kubelets restart one node at a time anyway). The random delay ends before midnight."""
    if not 0 <= hour <= 23:
        raise ConfigError(f"--hour {hour}: must be 0 to 23")
    if delay > (24 - hour) * 3600 - 60:
        raise ConfigError(f"a random delay of {delay}s after {hour:02d}:00 would reach the next day")
    quorum = [name for name, role in hosts if role in ("control-plane", "etcd")]
    if len(quorum) > MAX_MONTH_DAY:
        raise ConfigError(f"{len(quorum)} control-plane and etcd hosts: at most {MAX_MONTH_DAY} can renew on "
                          "days of their own")
    out: Dict[str, Schedule] = {}
    at = f"{hour:02d}:00:00"
    for i, name in enumerate(quorum):
        if len(quorum) <= len(WEEKDAYS):
            cal, cron = f"{WEEKDAYS[i]} *-*-* {at}", f"0 {hour} * * {i + 1}"
        else:
            cal, cron = f"*-*-{i + 1:02d} {at}", f"0 {hour} {i + 1} * *"
        out[name] = Schedule(cal, delay, cron)
    for name, _role in hosts:
        if name not in out:
            out[name] = Schedule(f"*-*-* {at}", delay, f"0 {hour} * * *")
    return out


@dataclass(frozen=True)
class TimerConfig:
    """What to install: which scheduler, which kubecert, the renewal window, when."""

    kind: str  # systemd | cron
    command: Tuple[str, ...]  # how to run kubecert on the node, e.g. ("/usr/local/bin/kubecert",)
    within: dt.timedelta = dt.timedelta(days=30)
    schedule: Schedule = Schedule()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"timer kind {self.kind!r}: choose systemd or cron")
        if not self.command or not self.command[0].startswith("/"):
            raise ConfigError(f"{' '.join(self.command) or 'kubecert'}: the timer needs kubecert's absolute path")
        for arg in self.command:
            if not _SAFE_ARG.match(arg):
                raise ConfigError(f"{arg!r}: kubecert's path may hold only letters, digits and ._/+:=@,- "
                                  "(it goes into a unit file and a crontab unquoted)")
        if self.within <= dt.timedelta(0):
            raise ConfigError("--within must be positive")
        if self.kind == "cron" and not self.schedule.cron:
            raise ConfigError(f"--on-calendar {self.schedule.on_calendar!r}: cron cannot express it")

    @property
    def window(self) -> str:
        seconds = int(self.within.total_seconds())
        return f"{seconds // 86400}d" if seconds % 86400 == 0 else f"{seconds}s"

    @property
    def argv(self) -> Tuple[str, ...]:
        return self.command + ("renew", "all", "--if-expiring-within", self.window, "--restart", "--yes")


def render_service(cfg: TimerConfig) -> bytes:
    return f"""{MARKER}
[Unit]
Description=Renew the kubeadm certificates expiring within {cfg.window} (kubecert)
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart={' '.join(cfg.argv)}
# renew + restart + health gates take minutes; a hung run must not hold the lock for ever
TimeoutStartSec=1h
# Hardening that leaves a renewal working: kubecert writes /etc/kubernetes and /var/lib/kubelet/pki,
# restarts through systemd (D-Bus) and the container runtime's socket, probes localhost and the
# node's addresses. /usr, /boot and /etc are read-only but for /etc/kubernetes: a certificatesDir
# elsewhere under /etc, or a hook that writes there, needs a drop-in (systemctl edit
# kubecert-renew.service) with ReadWritePaths=.
ProtectSystem=full
ReadWritePaths=-/etc/kubernetes
PrivateTmp=yes
NoNewPrivileges=yes
RestrictSUIDSGID=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
UMask=0077
""".encode()


def render_timer(cfg: TimerConfig) -> bytes:
    s = cfg.schedule
    return f"""{MARKER}
[Unit]
Description=Renew the kubeadm certificates expiring within {cfg.window} ({s.label}, kubecert)

[Timer]
OnCalendar={s.on_calendar}
RandomizedDelaySec={s.randomized_delay}
# a run missed while the node was off happens at the next boot
Persistent=true

[Install]
WantedBy=timers.target
""".encode()


def render_cron(cfg: TimerConfig) -> bytes:
    return f"""{MARKER}
# Renew the kubeadm certificates expiring within {cfg.window}; output to syslog (tag kubecert-renew)
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
{cfg.schedule.cron} root {' '.join(cfg.argv)} 2>&1 | logger -t kubecert-renew
""".encode()


def files_of(cfg: TimerConfig) -> Dict[str, bytes]:
    if cfg.kind == "systemd":
        return {SERVICE: render_service(cfg), TIMER: render_timer(cfg)}
    return {CRON: render_cron(cfg)}


def detect(fs: NodeFS) -> Tuple[Optional[str], str]:
    """(kind, why) of the scheduler the node uses; kind None when it has neither (see the module doc)."""
    if fs.exists("/run/systemd/system"):
        return "systemd", "systemd is running (/run/systemd/system)"
    for path in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd"):
        if fs.exists(path):
            return "systemd", f"systemd is installed ({path})"
    if fs.exists(CRON_DIR):
        return "cron", f"no systemd; {CRON_DIR} exists"
    return None, f"neither systemd (/run/systemd/system, /usr/lib/systemd/systemd) nor {CRON_DIR}"


# --- the files on a node -------------------------------------------------------------------------

@dataclass(frozen=True)
class FileState:
    path: str
    present: bool
    managed: bool  # it has kubecert's marker
    link: Optional[str] = None  # a symlink's target (e.g. a unit masked to /dev/null)
    detail: str = ""  # OnCalendar / the cron line / the command


def _inspect(fs: NodeFS, path: str) -> FileState:
    link = fs.readlink(path)
    if link is not None:
        return FileState(path, True, False, link)
    if not fs.exists(path):
        return FileState(path, False, False)
    try:
        text = fs.read(path, limit=64 * 1024).decode(errors="replace")
    except StoreError as exc:
        return FileState(path, True, False, detail=str(exc))
    managed = MARKER in text.splitlines()[:3]
    detail = ""
    for line in text.splitlines():
        if line.startswith(("OnCalendar=", "ExecStart=")) or (path == CRON and line[:1].isdigit()):
            detail = (detail + "; " if detail else "") + line
    return FileState(path, True, managed, detail=detail)


@dataclass(frozen=True)
class Change:
    written: Tuple[str, ...]
    unchanged: Tuple[str, ...]
    removed: Tuple[str, ...]  # the other scheduler's files of a previous install


def install(fs: NodeFS, cfg: TimerConfig, *, force: bool = False) -> Change:
    """Write the files of ``cfg`` (and remove kubecert's files of the other scheduler). A file that is
    there without kubecert's marker is refused (StoreError naming it; nothing changed) unless
    ``force``."""
    wanted = files_of(cfg)
    others = [p for p in (CRON,) + SYSTEMD_FILES if p not in wanted]
    states = {p: _inspect(fs, p) for p in list(wanted) + others}
    if not force:
        for p in wanted:
            st = states[p]
            if st.present and not st.managed:
                what = f"a symlink to {st.link}" if st.link else "not written by kubecert"
                raise StoreError(f"{fs.display(p)}: exists and is {what}; refusing to overwrite it "
                                 "(--force replaces it); nothing was changed")
    written, unchanged = [], []
    for p, data in wanted.items():
        st = states[p]
        if st.present and st.managed and st.link is None and fs.read(p) == data:
            unchanged.append(p)
            continue
        d = p.rsplit("/", 1)[0]
        if not fs.exists(d):
            fs.makedirs(d, 0o755)
        if st.link is not None:  # forced over a symlink (a masked unit): replace the link, not its target
            fs.remove(p)
        fs.write_atomic(p, data, 0o644)
        fs.set_meta(p, 0o644, None, None)  # the umask must not make a unit unreadable
        written.append(p)
    removed = [p for p in others if states[p].managed]
    for p in removed:
        fs.remove(p)
    if removed and SERVICE in removed:
        _remove_wants_link(fs)
    return Change(tuple(written), tuple(unchanged), tuple(removed))


def _remove_wants_link(fs: NodeFS) -> bool:
    target = fs.readlink(WANTS_LINK)
    if target is not None and target.rstrip("/").endswith("/kubecert-renew.timer"):
        fs.remove(WANTS_LINK)
        return True
    return False


def remove(fs: NodeFS) -> Change:
    """Delete kubecert's timer files (those with the marker) and the enable link to its timer; a file
    at one of our paths without the marker is left alone and named (StoreError, nothing removed)."""
    states = [_inspect(fs, p) for p in SYSTEMD_FILES + (CRON,)]
    foreign = [s for s in states if s.present and not s.managed]
    if foreign:
        raise StoreError(f"{fs.display(foreign[0].path)}: not written by kubecert; refusing to remove it "
                         "(nothing was removed)")
    removed = [s.path for s in states if s.present]
    for p in removed:
        fs.remove(p)
    if _remove_wants_link(fs):
        removed.append(WANTS_LINK)
    return Change((), (), tuple(removed))


@dataclass(frozen=True)
class Status:
    files: Tuple[FileState, ...]
    enabled_link: bool  # timers.target.wants has our timer (systemctl enable was run)

    @property
    def installed(self) -> Optional[str]:
        kinds = [k for k, paths in (("systemd", SYSTEMD_FILES), ("cron", (CRON,)))
                 if any(f.present and f.managed and f.path in paths for f in self.files)]
        return "+".join(kinds) or None


def status(fs: NodeFS) -> Status:
    files = tuple(_inspect(fs, p) for p in SYSTEMD_FILES + (CRON,))
    link = fs.readlink(WANTS_LINK)
    return Status(files, link is not None and link.rstrip("/").endswith("/kubecert-renew.timer"))


Run = Callable[[Sequence[str]], Tuple[int, str]]


def systemctl_state(run: Run) -> List[Tuple[str, str]]:
    """What systemd says about the timer (only meaningful on the running node, root /): enabled,
    active, next and last run. ``run(argv) -> (exit status, stdout)``."""
    out = []
    for what, argv in (("enabled", ["systemctl", "is-enabled", "kubecert-renew.timer"]),
                       ("active", ["systemctl", "is-active", "kubecert-renew.timer"])):
        _, text = run(argv)
        out.append((what, text.strip() or "unknown"))
    _, text = run(["systemctl", "show", "kubecert-renew.timer", "-p", "NextElapseUSecRealtime",
                   "-p", "LastTriggerUSec", "--no-pager"])
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key and value:
            out.append(({"NextElapseUSecRealtime": "next", "LastTriggerUSec": "last"}.get(key, key), value))
    _, text = run(["systemctl", "show", "kubecert-renew.service", "-p", "Result", "--no-pager"])
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "Result" and value:
            out.append(("last result", value))
    return out
