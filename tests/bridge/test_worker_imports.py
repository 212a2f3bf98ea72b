"""A worker holds at most 4 calls, so every megabyte it imports costs a quarter of that per call."""

from __future__ import annotations

import subprocess
import sys


def test_a_worker_does_not_import_heavy_optional_modules() -> None:
    code = "import sys, bridge.worker; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("aiohttp", "numpy", "jsonschema", "faster_whisper"):
        assert f"'{heavy}'" not in out, f"bridge.worker imports {heavy}"
