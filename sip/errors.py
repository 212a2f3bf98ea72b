"""The SIP layer's error (sip/ imports nothing of bridge/; `bridge.errors` re-exports it in its tree)."""

from __future__ import annotations


class SipError(Exception):
    """pjsua2 refused an operation, or the SIP endpoint could not start."""
