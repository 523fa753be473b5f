"""The oldest glibc a PyInstaller single file can run on: the highest GLIBC_x.y symbol version
that its bootloader or any shared library bundled inside it needs (``objdump -T``, undefined
symbols only). glibc itself is never bundled (PyInstaller excludes it), so this is the baseline.

    python3 packaging/glibc_baseline.py dist/kubecert-0.1.0-linux-x86_64 [--json]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

_VERSION = re.compile(r"\bGLIBC_(\d+)\.(\d+)(?:\.(\d+))?\b")


def needed_versions(path: str) -> List[Tuple[int, ...]]:
    """GLIBC_ versions of the undefined dynamic symbols of one ELF file."""
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        if "*UND*" not in line:
            continue
        m = _VERSION.search(line)
        if m:
            found.add(tuple(int(g) for g in m.groups() if g is not None))
    return sorted(found)


def bundled_elves(executable: str, into: str) -> Dict[str, str]:
    """Every ELF member of the single file's archive, written under ``into``: name -> path."""
    from PyInstaller.archive.readers import CArchiveReader  # type: ignore[import-untyped]

    reader = CArchiveReader(executable)
    out = {}
    for name in reader.toc:
        data = reader.extract(name)
        if not data or not data.startswith(b"\x7fELF"):
            continue
        path = os.path.join(into, name.replace("/", "__"))
        with open(path, "wb") as fh:
            fh.write(data)
        out[name] = path
    return out


def baseline(executable: str) -> Dict[str, object]:
    """``{"glibc": "2.34", "needed_by": [...], "files": N}`` for the single file ``executable``."""
    per_file: Dict[str, Tuple[int, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="kubecert-glibc-") as tmp:
        members = {"(bootloader)": executable, **bundled_elves(executable, tmp)}
        for name, path in members.items():
            versions = needed_versions(path)
            if versions:
                per_file[name] = versions[-1]
    top = max(per_file.values(), default=(0, 0))
    return {
        "glibc": ".".join(str(n) for n in top),
        "needed_by": sorted(n for n, v in per_file.items() if v == top),
        "files": len(members),
    }


def main(argv: List[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 3
    result = baseline(argv[0])
    if "--json" in argv[1:]:
        print(json.dumps(result))
    else:
        print(f"glibc baseline: {result['glibc']} (highest GLIBC_ symbol version needed, by "
              f"{', '.join(result['needed_by'])}; {result['files']} ELF files checked)")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
