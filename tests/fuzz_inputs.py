"""Hypothesis strategies for broken and hostile inputs, and the in-process CLI runner of test_fuzz.

Every strategy starts from a real file of a lab node (``original``) and breaks it the way a bad
copy, a disk error, an editor or an attacker would: flipped bytes, truncation, garbage between PEM
markers, DER where PEM belongs, values of the wrong type at any YAML path, aliases, other text
encodings. :func:`kubecert` runs the CLI in this process and captures what an operator would see.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import yaml
from hypothesis import strategies as st

from kubecert.cli import main

OK_CODES = (0, 1, 2, 3)

# ---------------------------------------------------------------------------------------------
# running the CLI in-process


@dataclass(frozen=True)
class Run:
    argv: Tuple[str, ...]
    code: object  # SystemExit.code: an int unless something is badly wrong
    out: str
    err: str
    warned: Tuple[str, ...]  # Python warnings: on a real terminal each is more lines on stderr

    def __str__(self) -> str:
        return f"kubecert {' '.join(self.argv)}\n-> exit {self.code}\nstdout: {self.out[-1500:]}\nstderr: {self.err}"


def kubecert(*argv: str) -> Run:
    """``kubecert ARGV`` in this process: exit code, stdout, stderr, warnings. Any exception other than
    SystemExit propagates (it would be a traceback on the operator's terminal)."""
    out, err = io.StringIO(), io.StringIO()
    code: object = "main() returned without exiting"
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return Run(tuple(argv), code, out.getvalue(), err.getvalue(), tuple(str(w.message) for w in caught))


def assert_contract(run: Run) -> None:
    """The hardening contract: a documented exit code, never a traceback or an internal error, and a
    refusal is one printable line."""
    assert run.code in OK_CODES and not isinstance(run.code, bool), str(run)
    assert "Traceback" not in run.out + run.err, str(run)
    assert not run.warned, f"{run}\nwarnings: {run.warned}"
    if run.code == 3:
        assert run.err.startswith("kubecert: error: "), str(run)
        assert run.err.endswith("\n") and run.err.count("\n") == 1, str(run)
        assert run.err[:-1].isprintable(), f"control characters in the error line: {run.err!r}"


# ---------------------------------------------------------------------------------------------
# PEM and DER

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?", re.S)


def pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN " + label.encode() + b"-----\n" + b"\n".join(lines) + b"\n-----END " + label.encode() + b"-----\n"


def blocks(data: bytes) -> List[Tuple[str, bytes]]:
    """(label, DER) of every PEM block in ``data``."""
    return [(m.group(1).decode(), base64.b64decode(b"".join(m.group(2).split()))) for m in _BLOCK.finditer(data)]


@st.composite
def flipped(draw: st.DrawFn, data: bytes, max_flips: int = 8) -> bytes:
    """``data`` with a few bytes xor-ed (at least one byte changes)."""
    if not data:
        return draw(st.binary(min_size=1, max_size=64))
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, max_flips))):
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] ^= draw(st.integers(1, 255))
    return bytes(buf)


@st.composite
def spliced(draw: st.DrawFn, data: bytes) -> bytes:
    """A slice of ``data`` replaced by random bytes (lengths, tags and values of DER all shift)."""
    i = draw(st.integers(0, len(data)))
    j = draw(st.integers(i, min(len(data), i + 32)))
    return data[:i] + draw(st.binary(max_size=32)) + data[j:]


def der_mutations(der: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(flipped(der), spliced(der), st.integers(0, len(der)).map(lambda n: der[:n]))


@st.composite
def broken_pem(draw: st.DrawFn, original: bytes, others: Sequence[bytes] = ()) -> bytes:
    """``original`` (a PEM file) broken one way or another; sometimes still valid (CRLF, a comment)."""
    found = blocks(original)
    label, der = found[0] if found else ("CERTIFICATE", original)
    how = draw(st.sampled_from([
        "der", "der", "der", "der", "flip", "truncate", "garbage", "bundle", "raw-der", "b64-random", "label",
        "empty", "crlf", "comment", "other", "concat-junk", "binary",
    ]))
    if how == "der":  # the most fruitful: valid PEM framing around a broken DER body
        return pem(label, draw(der_mutations(der))) + b"".join(pem(lb, d) for lb, d in found[1:])
    if how == "flip":
        return draw(flipped(original))
    if how == "truncate":
        return original[:draw(st.integers(0, len(original) - 1))]
    if how == "garbage":
        body = draw(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode)))
        return b"-----BEGIN " + label.encode() + b"-----\n" + body + b"\n-----END " + label.encode() + b"-----\n"
    if how == "bundle":
        junk = draw(st.sampled_from([b"", b"\n", b"# junk\n", b"\x00\xff"]))
        return (original + junk) * draw(st.integers(2, 40))
    if how == "raw-der":
        return draw(st.one_of(st.just(der), der_mutations(der)))
    if how == "b64-random":
        return pem(label, draw(st.binary(max_size=1500)))
    if how == "label":
        other = draw(st.sampled_from(["CERTIFICATE", "X509 CRL", "TRUSTED CERTIFICATE", "PRIVATE KEY",
                                      "RSA PRIVATE KEY", "EC PRIVATE KEY", "PUBLIC KEY", "ENCRYPTED PRIVATE KEY",
                                      "CERTIFICATE REQUEST", "DH PARAMETERS"]))
        return pem(other, der)
    if how == "empty":
        return draw(st.sampled_from([b"", b"\n", b" \t\n", b"\x00" * 16]))
    if how == "crlf":
        return original.replace(b"\n", b"\r\n")
    if how == "comment":
        return b"subject=CN = kubernetes\nissuer=CN = kubernetes\n" + original
    if how == "other":
        return draw(st.sampled_from(list(others) or [original]))
    if how == "concat-junk":
        return original + draw(st.binary(max_size=200))
    return draw(st.binary(max_size=2000))


# ---------------------------------------------------------------------------------------------
# YAML: values of every type, documents with wrong types at any path

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "~", "null", "yes", "0x1F", "1e400", "-0", ".inf", "2026-11-30", "12:30:00",
                     "::1", "[::1]:6443", "127.0.0.1:99999", "a" * 300, "\u202e\u0000\x1b[2J", "{{ x }}",
                     "/etc/kubernetes/pki", "../../../etc", "https://127.0.0.1:2379", "unix:///x.sock"]),
    st.dates(), st.datetimes(timezones=st.just(dt.timezone.utc)), st.binary(max_size=20),
)
YAML_VALUES: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=12), st.integers(), st.booleans()),
                                            inner, max_size=4)),
    max_leaves=12,
)

Path_ = Tuple[Union[str, int], ...]


def paths(doc: Any, prefix: Path_ = (), above: Tuple[int, ...] = ()) -> List[Path_]:
    """Every path to a value in ``doc`` (the document itself is ``()``); a recursive structure once."""
    out: List[Path_] = [prefix]
    if id(doc) in above:
        return out
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,), above + (id(doc),))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,), above + (id(doc),))
    return out


def replaced(doc: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (replaced(v, rest, value) if k == head else v) for k, v in doc.items()}
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(doc)]


def deleted(doc: Any, path: Path_) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        if not rest:
            return {k: v for k, v in doc.items() if k != head}
        return {k: (deleted(v, rest) if k == head else v) for k, v in doc.items()}
    if not rest:
        return [v for i, v in enumerate(doc) if i != head]
    return [deleted(v, rest) if i == head else v for i, v in enumerate(doc)]


def dump(docs: Sequence[Any]) -> bytes:
    """Multi-document YAML; objects used twice become anchors and aliases (safe_dump does that)."""
    return yaml.safe_dump_all(list(docs), sort_keys=False, allow_unicode=True).encode()


@st.composite
def wrong_typed(draw: st.DrawFn, docs: Sequence[Any], values: st.SearchStrategy[Any] = YAML_VALUES) -> List[Any]:
    """``docs`` with values of other types (or deleted keys, or aliases) at one to three paths."""
    docs = list(docs)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(docs) - 1))
        path = draw(st.sampled_from(paths(docs[i])))
        how = draw(st.sampled_from(["value", "value", "value", "delete", "alias", "self"]))
        if how == "delete" and path:
            docs[i] = deleted(docs[i], path)
        elif how == "alias":  # the same object at two places: an anchor and an alias
            other = draw(st.sampled_from(paths(docs[i])))
            target = docs[i]
            for p in other:
                target = target[p]
            docs[i] = replaced(docs[i], path, target)
        elif how == "self":  # a recursive structure: &a [*a]
            loop: List[Any] = []
            loop.append(loop)
            docs[i] = replaced(docs[i], path, loop)
        else:
            docs[i] = replaced(docs[i], path, draw(values))
    return docs


def reencoded(text: bytes) -> st.SearchStrategy[bytes]:
    """The same YAML in other encodings: UTF-16/32 with a BOM, UTF-16 without, Latin-1, bad UTF-8."""
    s = text.decode("utf-8", errors="replace")
    latin = s.replace("name: ", "name: \u00e9", 1)
    return st.sampled_from([
        s.encode("utf-16"), s.encode("utf-16-le"), s.encode("utf-16-be"), s.encode("utf-32"),
        b"\xef\xbb\xbf" + text, latin.encode("latin-1", errors="replace"), text.replace(b": ", b": \xff\xfe", 1),
        text.replace(b"\n", b"\r\n"), text.replace(b"\n", b"\r"), text + b"\x00", b"\t" + text,
    ])


HOSTILE_YAML = st.sampled_from([
    b"[" * 5000, b"{a: " * 3000, b"- " * 3000 + b"x", b"a: !!python/object/apply:os.system [true]\n",
    b"a: &a [*a]\n", b"a: *nowhere\n", b"<<: {a: 1}\n<<: [1, 2]\n", b"a: !!binary AAAA\n", b"a: !!set {x, y}\n",
    b"? [a, b]\n: c\n", b"a: 1\na: 2\n", b"%YAML 9.9\n---\na: 1\n", b"--- |\n  text\n", b"\x00\x01\x02",
    b"a: !!timestamp 2026-13-45\n", b"a: !!int 0x\n", b"a: !!float x\n", b"key: 99999999999999999999999999999\n",
])


_SCALAR_LINE = re.compile(rb"^([ \t]*(?:- )?[\w.-]+: )(\S.*)$", re.M)
HUGE_NUMBERS = (b"0x" + b"F" * 4000, b"0b" + b"1" * 15000, b"-0o" + b"7" * 6000, b"9" * 4000)


@st.composite
def huge_number(draw: st.DrawFn, original: bytes) -> bytes:
    """One scalar of a YAML file replaced by an integer YAML reads but Python cannot print: an int
    from 0x, 0b or 0o digits has no size limit, and str() refuses more than 4300 decimal digits."""
    lines = list(_SCALAR_LINE.finditer(original))
    big = draw(st.sampled_from(HUGE_NUMBERS))
    if not lines:
        return original + b"\nx: " + big + b"\n"
    m = draw(st.sampled_from(lines))
    return original[:m.start(2)] + big + original[m.end(2):]


@st.composite
def broken_yaml(draw: st.DrawFn, original: bytes) -> bytes:
    """A YAML file (possibly multi-document) broken at the data, text or encoding level."""
    docs = [d for d in yaml.safe_load_all(original)]
    how = draw(st.sampled_from(["typed", "typed", "typed", "typed", "random", "encoding", "hostile", "flip",
                                "truncate", "empty", "huge-number"]))
    if how == "typed":
        return dump(draw(wrong_typed(docs)))
    if how == "huge-number":
        return draw(huge_number(original))
    if how == "random":
        return dump(draw(st.lists(YAML_VALUES, min_size=1, max_size=3)))
    if how == "encoding":
        return draw(reencoded(original))
    if how == "hostile":
        return draw(HOSTILE_YAML)
    if how == "flip":
        return draw(flipped(original))
    if how == "truncate":
        return original[:draw(st.integers(0, len(original)))]
    return draw(st.sampled_from([b"", b"---\n", b"--- ~\n", b"\n\n", b"# only a comment\n"]))


CREDENTIALS = ("client-certificate-data", "client-key-data", "certificate-authority-data")


def paths_to(doc: Any, keys: Sequence[str]) -> List[Path_]:
    """Paths to the values of ``keys``, wherever they are in ``doc``."""
    return [p for p in paths(doc) if p and p[-1] in keys]


def value_at(doc: Any, path: Path_) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def broken_kubeconfig(draw: st.DrawFn, original: bytes) -> bytes:
    """A kubeconfig broken as YAML, or with a credential that is not base64 or not PEM inside."""
    doc = yaml.safe_load(original)
    fields = paths_to(doc, CREDENTIALS)
    if not fields or draw(st.booleans()):
        return draw(broken_yaml(original))
    path = draw(st.sampled_from(fields))
    inner = base64.b64decode(value_at(doc, path))
    value = draw(st.one_of(
        st.text(max_size=80), st.sampled_from(["", "=", "====", "A", "AAA", "AAAA\n", " AAAA", "AA==AA=="]),
        st.integers(), st.lists(st.text(max_size=4), max_size=2),
        broken_pem(inner).map(lambda b: base64.b64encode(b).decode()),
    ))
    return dump([replaced(doc, path, value)])


FLAG_VALUES = st.one_of(
    st.text(max_size=40), st.integers().map(str),
    st.sampled_from(["", "0", "65536", "-1", "6443", "abc", "http://[::1", "https://127.0.0.1:99999",
                     "https://127.0.0.1:2379,https://[::1]:2379", "unix:///run/etcd.sock", "0.0.0.0", "::",
                     "a=b=c", "https://x:y@host:1/path?q", "\u0661\u0662", "9" * 5000]),
)
MANIFEST_FLAGS = ["secure-port", "advertise-address", "bind-address", "etcd-servers", "service-cluster-ip-range",
                  "listen-client-urls", "advertise-client-urls", "initial-cluster", "name"]


@st.composite
def broken_manifest(draw: st.DrawFn, original: bytes) -> bytes:
    """A static pod manifest broken as YAML, or with odd flag values and liveness probes."""
    if draw(st.booleans()):
        return draw(broken_yaml(original))
    doc = yaml.safe_load(original)
    args = doc["spec"]["containers"][0]["command"]
    for _ in range(draw(st.integers(1, 3))):
        args.append(f"--{draw(st.sampled_from(MANIFEST_FLAGS))}={draw(FLAG_VALUES)}")
    probe = doc["spec"]["containers"][0].get("livenessProbe")
    if probe and draw(st.booleans()):
        probe["httpGet"] = draw(st.one_of(YAML_VALUES, st.fixed_dictionaries({"host": YAML_VALUES,
                                                                              "port": YAML_VALUES})))
    return dump([doc])


@st.composite
def broken_kubelet_config(draw: st.DrawFn, original: bytes) -> bytes:
    """/var/lib/kubelet/config.yaml broken as YAML, or with odd values where kubecert reads."""
    if draw(st.booleans()):
        return draw(broken_yaml(original))
    doc = yaml.safe_load(original)
    for key in draw(st.lists(st.sampled_from(["healthzPort", "healthzBindAddress", "fileCheckFrequency",
                                              "staticPodPath"]), min_size=1, max_size=3)):
        doc[key] = draw(st.one_of(YAML_VALUES, FLAG_VALUES, st.sampled_from(["20s", "1.5s", "1.2.3s", "1e999s",
                                                                            "9" * 400 + "s", "-5s", "1m0s"])))
    return dump([doc])


UNIT_LINES = st.one_of(
    st.text(max_size=60).map(lambda t: t.replace("\n", " ")),
    st.lists(st.sampled_from(MANIFEST_FLAGS), min_size=1, max_size=3).flatmap(
        lambda flags: st.tuples(*[FLAG_VALUES for _ in flags]).map(
            lambda values: "ExecStart=/usr/bin/etcd " + " ".join(f"--{f}={v}" for f, v in zip(flags, values)))),
    st.sampled_from(["ExecStart=/usr/bin/etcd --name 'unbalanced", "ExecStart=", "ExecStart=\\", "[Service]",
                     "ETCD_LISTEN_CLIENT_URLS=https://[::1", "ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:0",
                     "ETCD_ADVERTISE_CLIENT_URLS='https://127.0.0.1:2379'", "ETCD_=x", "ETCD_NAME"]),
)


def alias_bomb(top: Optional[str] = None, levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: ``width ** levels`` values from a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    body = "\n".join(lines) + "\n"
    return (top or "") + body


# ---------------------------------------------------------------------------------------------
# flags

RFC3339_EXTREMES = st.sampled_from([
    "2026-11-30T12:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59.999999999Z",
    "1970-01-01T00:00:00+00:00", "2026-11-30T12:00:00+23:59", "2026-11-30T12:00:00-23:59", "2026-11-30",
    "2026-11-30T12:00:00", "2026-02-30T12:00:00Z", "2026-11-30T25:00:00Z", "2026-11-30T12:00:00.Z",
    "2026-11-30t12:00:00z", "  2026-11-30T12:00:00Z  ", "2026-11-30T12:00:00.0000000000000000001Z",
    "+2026-11-30T12:00:00Z", "\u0662\u0660\u0662\u0666-11-30T12:00:00Z", "now", "", "-1", "Z", "T",
    "2026-11-30T12:00:00+99:00", "2026-11-30T12:00:00Z\x00", "1949-12-31T23:59:59Z", "2050-01-01T00:00:00Z",
])
DURATIONS = st.one_of(
    st.sampled_from(["30d", "0", "0d", "1s", "7d", "1y", "-1d", "99999999999999999999d", "9" * 400 + "y",
                     "1.5d", "d", "", " 5 d ", "\u0661\u0662d", "10x", "1e9d", "100000000000y", "3w"]),
    st.integers(0, 10 ** 12).map(lambda n: f"{n}d"),
    st.text(max_size=12),
)
