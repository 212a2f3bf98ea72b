"""Kamailio's view of the worker pool: the dispatcher list and the command line, from the bridge's config.

A PBX sees one SIP address (Kamailio, `bridge/assets/kamailio.cfg`); Kamailio spreads INVITEs over
the workers with the dispatcher module's call-load algorithm. Each worker is one destination of set
`DEFAULT_SET_ID` with a unique `duid` and `maxload` = `sip.calls_per_worker`, so Kamailio never sends a
worker more calls than it holds. Workers on other hosts that share this config's layout are added with
`Host` entries (`HOST[:FIRST_PORT[:WORKERS]]` on the command line); with several hosts, none may be
a loopback address (docs/fleet.md).

Nothing here does I/O: `dispatcher_list` returns the file's text, `kamailio_args` the argv.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.config import Config
from bridge.errors import ConfigError

DEFAULT_SET_ID = 1
DEFAULT_SHM_MB = 64
DEFAULT_PKG_MB = 8
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Host:
    """One host's workers: SIP ports `first_port` .. `first_port + workers - 1` on `address`."""

    address: str
    first_port: int
    workers: int


@dataclass(frozen=True)
class Destination:
    """One line of the dispatcher list."""

    uri: str
    duid: str
    maxload: int
    set_id: int = DEFAULT_SET_ID

    def line(self) -> str:
        # setid destination flags priority attrs
        return f"{self.set_id} {self.uri} 0 0 duid={self.duid};maxload={self.maxload}"


def parse_host(spec: str, config: Config) -> Host:
    """`HOST[:FIRST_PORT[:WORKERS]]`; missing parts come from `config.sip` (the same layout elsewhere).

    An IPv6 address goes in brackets: `[2001:db8::5]:5080:8`.
    """
    text = spec.strip()
    if text.startswith("["):
        address, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"--host-extra {spec!r}: unclosed '['")
        parts = [address, *[p for p in rest.split(":")[1:]]] if rest else [address]
    else:
        parts = text.split(":")
    if not parts[0] or len(parts) > 3:
        raise ConfigError(f"--host-extra {spec!r}: expected HOST[:FIRST_PORT[:WORKERS]]")
    try:
        first_port = int(parts[1]) if len(parts) > 1 and parts[1] else config.sip.first_port
        workers = int(parts[2]) if len(parts) > 2 and parts[2] else config.sip.workers
    except ValueError:
        raise ConfigError(f"--host-extra {spec!r}: FIRST_PORT and WORKERS must be integers") from None
    if not 1 <= first_port or first_port + workers - 1 > 65535 or workers < 1:
        raise ConfigError(
            f"--host-extra {spec!r}: ports {first_port}..{first_port + workers - 1} out of range"
        )
    return Host(parts[0], first_port, workers)


def local_host(config: Config, address: str | None = None) -> Host:
    """This host's workers. `address` overrides `sip.host`, and is required when that is a wildcard."""
    chosen = address if address is not None else config.sip.host
    if chosen in WILDCARD_ADDRESSES:
        raise ConfigError(
            f"sip.host is {config.sip.host!r}, which Kamailio cannot send to; "
            "give the workers' reachable address with --address"
        )
    return Host(chosen, config.sip.first_port, config.sip.workers)


def _uri_host(address: str) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass  # a host name
    return address


def destinations(
    config: Config,
    extra_hosts: Iterable[Host] = (),
    *,
    address: str | None = None,
    transport: str = "udp",
    set_id: int = DEFAULT_SET_ID,
) -> list[Destination]:
    """Every worker of this host and of `extra_hosts`, in order; raise ConfigError on a duplicate."""
    if transport not in config.sip.transports:
        raise ConfigError(f"transport {transport!r} is not in sip.transports {list(config.sip.transports)}")
    suffix = "" if transport == "udp" else f";transport={transport}"
    out: list[Destination] = []
    seen: set[tuple[str, int]] = set()
    for host in (local_host(config, address), *extra_hosts):
        for index in range(host.workers):
            port = host.first_port + index
            if (host.address, port) in seen:
                raise ConfigError(f"worker {host.address}:{port} is listed twice")
            seen.add((host.address, port))
            out.append(
                Destination(
                    uri=f"sip:{_uri_host(host.address)}:{port}{suffix}",
                    duid=f"{host.address}:{port}",
                    maxload=config.sip.calls_per_worker,
                    set_id=set_id,
                )
            )
    return out


def dispatcher_list(
    config: Config,
    extra_hosts: Iterable[Host] = (),
    *,
    address: str | None = None,
    transport: str = "udp",
    set_id: int = DEFAULT_SET_ID,
    source: str = "config.yaml",
) -> str:
    """The text of Kamailio's `dispatcher.list` for the pool: a header comment naming each host and its
    SIP ports (the first is the host of `config`), then one line a worker."""
    extra = list(extra_hosts)
    dests = destinations(config, extra, address=address, transport=transport, set_id=set_id)
    hosts = [local_host(config, address), *extra]
    if len(hosts) > 1 and (looped := [h.address for h in hosts if _is_loopback(h.address)]):
        raise ConfigError(
            f"{looped[0]} is a loopback address: on several hosts every host needs one that Kamailio and "
            "the callers reach (its workers' SDP offers it for RTP); set sip.host or give --address"
        )
    header = [
        f"# Generated by `vblaze-bridge dispatcher-list` from {source}; do not edit, regenerate.",
        f"# {len(dests)} workers, {sum(d.maxload for d in dests)} calls at most, on {len(hosts)} "
        f"host{'s' if len(hosts) > 1 else ''}:",
        *(f"#   {_host_line(host)}{' (this config)' if i == 0 else ''}" for i, host in enumerate(hosts)),
        "# setid destination flags priority attrs",
    ]
    return "\n".join([*header, *(d.line() for d in dests)]) + "\n"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address.lower() == "localhost"


def _host_line(host: Host) -> str:
    last = host.first_port + host.workers - 1
    ports = f"port {host.first_port}" if host.workers == 1 else f"ports {host.first_port}-{last}"
    return f"{_uri_host(host.address)}: {host.workers} worker{'s' if host.workers > 1 else ''}, SIP {ports}"


def kamailio_args(
    cfg: str,
    list_path: str,
    listen: str,
    *,
    runtime_dir: str,
    ctl_socket: str | None = None,
    retry_after: int | None = None,
    ping_interval: int | None = None,
    shm_mb: int = DEFAULT_SHM_MB,
    pkg_mb: int = DEFAULT_PKG_MB,
    extra_defines: Sequence[str] = (),
) -> list[str]:
    """argv to run `kamailio.cfg` in the foreground, logging to stderr.

    `listen` is a Kamailio socket such as `udp:127.0.0.1:5060`; the other values become `-A` defines
    that the cfg reads (see its header).
    """
    defines = [f"LISTEN={listen}", f'DS_LIST="{list_path}"']
    if ctl_socket is not None:
        defines.append(f'CTL_SOCKET="unix:{ctl_socket}"')
    if retry_after is not None:
        defines.append(f"RETRY_AFTER={int(retry_after)}")
    if ping_interval is not None:
        defines.append(f"PING_INTERVAL={int(ping_interval)}")
    defines.extend(extra_defines)
    argv = ["kamailio", "-f", cfg, "-DD", "-E", "-w", runtime_dir, "-Y", runtime_dir]
    argv += ["-m", str(shm_mb), "-M", str(pkg_mb)]
    for define in defines:
        argv += ["-A", define]
    return argv
