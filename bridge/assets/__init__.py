"""Files the bridge's commands read or an operator installs, shipped inside the package.

This directory is their only copy: the checkout's tests, Makefile and benchmarks read them here, and an
installed wheel carries them as package data, read with `importlib.resources`. `vblaze-bridge
print-config` prints the sample config, `vblaze-bridge print-asset NAME` any of them (listed with no
NAME), so that an install from a wheel has everything the docs tell you to copy.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import TextIO

# name -> what it is; the names are the files next to this module.
ASSETS = {
    "config.yaml": "sample config: every key with its default and a one-line comment",
    "vblaze-bridge.service": "systemd unit of the bridge (Type=notify, drain on SIGTERM)",
    "vblaze-bridge.sysusers.conf": "systemd-sysusers file for the vblaze-bridge system user",
    "kamailio.cfg": "Kamailio dispatcher in front of the worker pool (docs/kamailio.md)",
    "vblaze-kamailio.service": "systemd unit running Kamailio next to the bridge",
    "vblaze-rtpengine.service": "systemd unit of rtpengine for the secure edge (SRTP, docs/security.md)",
    "uac_speech.xml": "sipp caller scenario of `vblaze-bridge demo` (a template, @NAME@ placeholders)",
}
CONFIG = "config.yaml"
SIPP_SCENARIO = "uac_speech.xml"


def read_text(name: str) -> str:
    """The text of the shipped file `name` (one of ASSETS); KeyError for any other name."""
    if name not in ASSETS:
        raise KeyError(f"no shipped file {name!r}; there are: {', '.join(ASSETS)}")
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def print_asset(name: str | None, out: TextIO = sys.stdout) -> int:
    """`vblaze-bridge print-asset [NAME]`: the file's text, or with no name the list of names."""
    if name is None:
        width = max(map(len, ASSETS))
        for each, what in ASSETS.items():
            out.write(f"{each:<{width}}  {what}\n")
        return 0
    out.write(read_text(name))
    return 0
