"""The secure edge's shipped parts without a call: every part of the cfg parses on its own and together,
every define the cfg reads is in its header, the rtpengine unit passes `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.config import parse_config
from bridge.dispatcher import dispatcher_list, kamailio_args

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "bridge" / "assets" / "kamailio.cfg"
UNITS = REPO / "bridge" / "assets"
TLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so")
PARTS = ["WITH_TLS", "WITH_AUTH", "WITH_SRTP", "WITH_PIKE", "WITH_SECURE", "WITH_SECURE ANCHOR_PLAIN"]


def header_and_body() -> tuple[str, str]:
    text = CFG.read_text()
    end = text.index("#!ifndef LISTEN")
    return text[:end], text[end:]


def test_every_define_the_cfg_reads_is_in_its_header() -> None:
    header, body = header_and_body()
    read = set(re.findall(r"^#!ifn?def (\w+)", body, re.M))
    for name in read:
        assert re.search(rf"^#\s+{name}\b", header, re.M), name
    for part in ("WITH_TLS", "WITH_AUTH", "WITH_SRTP", "WITH_PIKE", "WITH_SECURE", "ANCHOR_PLAIN"):
        assert part in read, part


def test_secure_parts_are_off_by_default() -> None:
    """Without a define the cfg is the plain dispatcher: no TLS, no auth, no rtpengine, no pike."""
    _, body = header_and_body()
    for module in ("tls", "auth_db", "permissions", "rtpengine", "pike"):
        (line,) = [i for i, text in enumerate(body.splitlines()) if f'loadmodule "{module}.so"' in text]
        before = body.splitlines()[:line]
        opened = [t for t in before if t.startswith("#!ifdef WITH_")]
        assert opened, module


@pytest.mark.skipif(
    shutil.which("kamailio") is None or not TLS_MODULE.exists(),
    reason="kamailio-tls-modules is not installed",
)
@pytest.mark.parametrize("defines", PARTS)
def test_kamailio_accepts_each_secure_part(tmp_path: Path, defines: str) -> None:
    (tmp_path / "ds.list").write_text(dispatcher_list(parse_config({})))
    extra = [*defines.split(), "TLS_LISTEN=tls:127.0.0.1:5998", f'AUTH_DB="text://{tmp_path}"']
    argv = kamailio_args(
        str(CFG), str(tmp_path / "ds.list"), "udp:127.0.0.1:5999", runtime_dir=str(tmp_path),
        ctl_socket=str(tmp_path / "ctl"), extra_defines=extra,
    )  # fmt: skip
    result = subprocess.run([*argv, "-c"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "config file ok" in result.stderr + result.stdout
    if "WITH_TLS" in defines or "WITH_SECURE" in defines:
        assert "tls: 127.0.0.1" in result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("name", ["vblaze-rtpengine.service", "vblaze-kamailio.service"])
def test_units_verify_clean(name: str) -> None:
    text = (UNITS / name).read_text()
    for binary in re.findall(r"^ExecStart=(\S+)", text, re.M):
        if not Path(binary).exists():
            pytest.skip(f"{binary} is not installed")
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(UNITS / name)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_kamailio_unit_passes_the_secure_defines_and_the_rtpengine_unit_its_ports() -> None:
    kam = (UNITS / "vblaze-kamailio.service").read_text()
    assert "$KAMAILIO_DEFINES" in kam and "Environment=KAMAILIO_DEFINES=\n" in kam
    rtp = (UNITS / "vblaze-rtpengine.service").read_text()
    assert (
        "--table=-1" in rtp
        and "--listen-ng=${NG_LISTEN}" in rtp
        and "Environment=NG_LISTEN=127.0.0.1:2223" in rtp
    )
    # Kamailio's default RTPENGINE_SOCK is the unit's default NG address.
    assert '#!define RTPENGINE_SOCK "udp:127.0.0.1:2223"' in CFG.read_text()
