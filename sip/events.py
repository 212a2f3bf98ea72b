"""Small frozen events that cross from the pjsua2 thread to the asyncio loop, and commands back.

Nothing here holds a pjsua2 object: a call is named by `key`, a number the SIP thread gives each
call and never reuses (pjsua's own call ids are reused after a call ends).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallStarted:
    key: int
    call_id: str
    from_uri: str
    to_uri: str
    remote: str
    headers: tuple[tuple[str, str], ...]
    codecs: tuple[str, ...]


@dataclass(frozen=True)
class CallMedia:
    key: int
    codec: str
    status: str  # active, remote_hold, local_hold, none


@dataclass(frozen=True)
class CallDtmf:
    key: int
    digit: str


@dataclass(frozen=True)
class CallEnded:
    key: int
    status: int
    reason: str  # remote_bye, local_hangup, failed
    detail: str


@dataclass(frozen=True)
class InviteRejected:
    status: int
    result: str
    source: str


SipEvent = CallStarted | CallMedia | CallDtmf | CallEnded | InviteRejected
