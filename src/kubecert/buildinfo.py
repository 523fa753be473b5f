"""How this kubecert was built, for ``kubecert --version``.

A PyInstaller single file carries ``BUILD_INFO.json`` beside this module (written by
``scripts/build-dist.sh`` into the build only, never into the source tree); anything else is an
installed package (or a source checkout) running on the Python at hand. The version option
formats this at start-up: it costs a ``getattr`` outside a bundle and one small file read inside.
"""

from __future__ import annotations

import os
import sys
from typing import Dict

BUILD_INFO = "BUILD_INFO.json"


def frozen() -> bool:
    """True inside a PyInstaller bundle (its bootloader sets both)."""
    return bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def build_info() -> Dict[str, str]:
    """What build-dist.sh recorded (``kind``, ``pyinstaller``, ``python``, ``built``, ``platform``),
    or what can be said of an installed package."""
    python = ".".join(str(n) for n in sys.version_info[:3])
    if not frozen():
        here = os.path.dirname(os.path.abspath(__file__))
        kind = "source checkout" if os.path.basename(os.path.dirname(here)) == "src" else "installed package"
        return {"kind": kind, "python": python}
    import json

    try:
        with open(os.path.join(os.path.dirname(__file__), BUILD_INFO), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = {}
    info = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    info.setdefault("python", python)
    info["kind"] = "single-file"
    return info


def describe() -> str:
    """``single-file, PyInstaller 6.x, Python 3.11.7, built 2026-12-07`` or
    ``installed package, Python 3.12.1``."""
    info = build_info()
    parts = [info["kind"]]
    if "pyinstaller" in info:
        parts.append(f"PyInstaller {info['pyinstaller']}")
    parts.append(f"Python {info['python']}")
    if "built" in info:
        parts.append(f"built {info['built']}")
    return ", ".join(parts)
