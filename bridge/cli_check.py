"""``vblaze-bridge check-config --config PATH``: validate a config file without starting anything.

Prints ``config OK: PATH`` on stdout and returns 0, or prints each problem (file, dotted key, what was
expected) on stderr and returns 2. Environment variables the file names for secrets are checked too:
a missing one is a warning on stderr, not a failure, since the check may run outside the service's
environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from bridge.config import Config, load_config
from bridge.errors import ConfigError

EXIT_OK = 0
EXIT_INVALID = 2


def secret_warnings(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """Warnings about secret environment variables the config relies on but that are unset."""
    warnings = []
    if cfg.sink.kind == "webhook":
        if not env.get(cfg.webhook.secret_env):
            warnings.append(
                f"webhook.secret_env: environment variable {cfg.webhook.secret_env} is not set "
                "(the bridge would refuse to start)"
            )
        if cfg.webhook.bearer_env and not env.get(cfg.webhook.bearer_env):
            warnings.append(f"webhook.bearer_env: environment variable {cfg.webhook.bearer_env} is not set")
    # NATS credentials and TLS files: unreadable, a worker refuses to start (bridge.nats.transport).
    if "nats" in cfg.sink.destinations:
        nats = cfg.nats
        files = {
            "creds_file": nats.creds_file,
            "nkey_seed_file": nats.nkey_seed_file,
            "user_password_file": nats.user_password_file,
            "tls_ca_file": nats.tls_ca_file,
            "tls_cert_file": nats.tls_cert_file,
            "tls_key_file": nats.tls_key_file,
        }
        for key, path in files.items():
            if path and not os.access(path, os.R_OK):
                warnings.append(f"nats.{key}: cannot read {path} (the workers would refuse to start)")
    # The control API's tokens: unset, `run` refuses to start (bridge.control.api.load_tokens).
    for index, token in enumerate(cfg.control.tokens if cfg.control.port else ()):
        if not env.get(token.env, "").strip():
            warnings.append(
                f"control.tokens.{index}.env: environment variable {token.env} is not set "
                "(the bridge would refuse to start)"
            )
    return warnings


def check_config(
    path: str | Path,
    out: TextIO | None = None,
    err: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Validate `path`; report on `out`/`err`; return the process exit code (0 or 2)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(exc, file=err)
        return EXIT_INVALID
    for warning in secret_warnings(cfg, os.environ if env is None else env):
        print(f"{path}: warning: {warning}", file=err)
    print(f"config OK: {path}", file=out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vblaze-bridge check-config", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config file to validate")
    args = parser.parse_args(argv)
    return check_config(args.config)


if __name__ == "__main__":
    sys.exit(main())
