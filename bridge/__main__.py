"""Command line: `vblaze-bridge run|worker|check-config|dispatcher-list|demo|print-config|print-asset`,
and the control API's clients `calls|pause|resume|hangup`.

Parses arguments and wires; nothing more.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from bridge.assets import ASSETS, CONFIG, print_asset
from bridge.config import METRICS_DIR_ENV, Config, load_config
from bridge.control.cli import DEFAULT_TOKEN_ENV
from bridge.errors import ConfigError, MetricsDirInUse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vblaze-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the supervisor and its worker pool")
    run.add_argument("--config", type=Path, default=Path("config.yaml"))
    worker = sub.add_parser("worker", help="one worker process (started by `run`)")
    worker.add_argument("--config", type=Path, required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--control-fd", type=int, default=None, help="the supervisor's socketpair end")
    zygote = sub.add_parser("zygote", help="the warm parent workers are forked from (started by `run`)")
    zygote.add_argument("--config", type=Path, required=True)
    zygote.add_argument("--channel-fd", type=int, required=True, help="the supervisor's socketpair end")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, default=Path("config.yaml"))
    dlist = sub.add_parser("dispatcher-list", help="print Kamailio's dispatcher.list for the worker pool")
    dlist.add_argument("--config", type=Path, default=Path("config.yaml"))
    dlist.add_argument(
        "--host-extra",
        action="append",
        default=[],
        metavar="HOST[:FIRST_PORT[:WORKERS]]",
        help="another bridge host's workers, this config's layout unless given; repeat for each host",
    )
    dlist.add_argument("--address", default=None, help="this host's workers' address if sip.host is 0.0.0.0")
    demo = sub.add_parser("demo", help="stand-in engine + bridge + one sample call")
    demo.add_argument("--text", default=None, help="the sentence the sample call speaks")
    demo.add_argument("--verbose", action="store_true", help="let the peers' logs through to the terminal")
    sub.add_parser("print-config", help="print the sample config (every key, its default, a comment)")
    asset = sub.add_parser("print-asset", help="print a shipped file (systemd units, Kamailio cfg, ...)")
    asset.add_argument(
        "name", nargs="?", choices=list(ASSETS), metavar="NAME", help="a shipped file; omit it to list them"
    )
    _control_parsers(sub)
    return parser


def _control_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The clients of the control API (bridge/control/cli.py)."""
    for name, text in (
        ("calls", "list the active calls"),
        ("pause", "pause a call's transcription"),
        ("resume", "resume a call's transcription"),
        ("hangup", "hang a call up"),
    ):
        client = sub.add_parser(name, help=f"{text} (control API)")
        if name != "calls":
            client.add_argument("call_id", metavar="CALL_ID")
        client.add_argument("--config", type=Path, default=Path("config.yaml"))
        client.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, help="variable holding the API token")
        if name == "pause":
            client.add_argument("--reason", default=None, help="why (shown in call.paused)")
        if name == "calls":
            client.add_argument(
                "--follow", action="store_true", help="show the calls' events live, until Ctrl-C"
            )
            client.add_argument(
                "--call", default=None, metavar="CALL_ID", help="with --follow: this call only"
            )


def _control_client(args: argparse.Namespace, config: Config) -> int:
    """`calls [--follow]`, `pause`, `resume`, `hangup`: the control API's clients (bridge/control/cli.py)."""
    from bridge.control.cli import follow, run

    if args.command == "calls" and args.follow:
        return follow(config, args.call, args.token_env, os.environ, sys.stdout)
    call_id, reason = getattr(args, "call_id", None), getattr(args, "reason", None)
    return run(config, args.command, call_id, reason, args.token_env, os.environ)


def _zygote(config: Config, path: Path, channel_fd: int) -> NoReturn:
    from bridge.logs import setup_logging
    from bridge.zygote import serve

    setup_logging(config.logging, "zygote")
    serve(str(path), channel_fd)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("print-config", "print-asset"):
        return print_asset(CONFIG if args.command == "print-config" else args.name)
    if args.command == "demo":
        from bridge.demo import run_demo

        return run_demo(args.text, verbose=args.verbose)
    if args.command == "check-config":
        from bridge.cli_check import check_config

        return check_config(args.config)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"vblaze-bridge: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.command in ("calls", "pause", "resume", "hangup"):
        return _control_client(args, config)
    if args.command == "dispatcher-list":
        from bridge.dispatcher import dispatcher_list, parse_host

        try:
            hosts = [parse_host(spec, config) for spec in args.host_extra]
            print(dispatcher_list(config, hosts, address=args.address, source=str(args.config)), end="")
        except ConfigError as exc:
            print(f"vblaze-bridge: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "worker":
        from bridge.worker import main as worker_main

        worker_main(config, args.index, args.control_fd, str(args.config))
        return 0
    if args.command == "zygote":
        _zygote(config, args.config, args.channel_fd)
    return _run(config, args.config)


def _run(config: Config, config_path: Path) -> int:
    """`run`: the supervisor, with its first zygote forked before it imports the rest."""
    preforked = None
    if config.sip.spawn == "fork":  # before the supervisor imports more: what it has is then shared
        from bridge.zygote import prefork

        preforked = prefork(config, str(config_path.resolve()))
    # Out of the environment before prometheus_client is imported, so that the supervisor's own metrics
    # stay in memory; the supervisor owns this directory and exports it to its workers.
    inherited = os.environ.pop(METRICS_DIR_ENV, None)
    metrics_dir = Path(inherited) if inherited else None
    import uvloop

    from bridge.app import Supervisor
    from bridge.control.api import load_tokens
    from bridge.logs import setup_logging
    from bridge.route_sinks import RouteSinks

    try:
        tokens = load_tokens(config.control, os.environ)
        RouteSinks.check_credentials(config, os.environ)
    except ConfigError as exc:
        print(f"vblaze-bridge: invalid configuration:\n{config_path}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging, "supervisor")
    try:
        return uvloop.run(Supervisor(config, config_path.resolve(), metrics_dir, tokens, preforked).run())
    except MetricsDirInUse as exc:
        print(f"vblaze-bridge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
