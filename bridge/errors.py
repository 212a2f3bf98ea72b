"""The bridge's error tree.

    BridgeError                 root of every error the bridge raises on purpose
    ├── ConfigError             a config file or key is invalid (never retryable)
    ├── EngineError             the V-Blaze engine failed us
    │   ├── EngineUnavailable   connect refused, 503 at the upgrade, DNS, timeout (retryable)
    │   ├── EngineRejected      4xx at the upgrade: our tags are wrong (not retryable)
    │   ├── EngineClosed        the socket closed before the final transcript (retryable)
    │   └── EngineProtocolError a message we cannot parse (not retryable)
    ├── MetricsDirInUse         another live bridge owns the workers' metrics directory
    ├── InvalidState            (bridge/vblaze/protocol.py) a session call in the wrong state
    └── SinkStateError          (bridge/webhook/delivery.py) a sink call in the wrong state

    SipError                    pjsua2 refused an operation (not retryable); defined in `sip.errors`
                                (sip/ imports nothing of bridge/, so it is no BridgeError), re-exported here

`is_retryable` is the one place that decides whether an error is worth another attempt. A webhook
attempt's outcome is not an exception: `bridge/webhook/policy.py` decides retries from the answer.
"""

from __future__ import annotations

from sip.errors import SipError


class BridgeError(Exception):
    """Root of the bridge's own errors."""


class ConfigError(BridgeError):
    """A configuration file or key is invalid."""


class EngineError(BridgeError):
    """The V-Blaze engine failed."""


class EngineUnavailable(EngineError):
    """The engine could not be reached or refused for capacity (503)."""


class EngineRejected(EngineError):
    """The engine refused the request itself (HTTP 4xx at the upgrade)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"engine rejected the stream: HTTP {status}: {body.strip()[:200]}")
        self.status = status
        self.body = body


class EngineClosed(EngineError):
    """The engine closed the socket before sending the final transcript."""


class EngineProtocolError(EngineError):
    """The engine sent something that does not follow the protocol."""


class MetricsDirInUse(BridgeError):
    """Another live bridge owns the directory for the workers' metric files."""


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt at the same operation may succeed."""
    if isinstance(error, (EngineUnavailable, EngineClosed)):
        return True
    if isinstance(error, (ConfigError, EngineRejected, EngineProtocolError, SipError)):
        return False
    return isinstance(error, (OSError, TimeoutError, ConnectionError))
