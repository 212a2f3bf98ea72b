"""Small frozen events that cross from the pjsua2 thread to the asyncio loop, and commands back.

Nothing here holds a pjsua2 object: a call is named by `key`, a number the SIP thread gives each
call and never reuses (pjsua's own call ids are reused after a call ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sip.routing import DEFAULT_ROUTE, NO_ROUTE
from sip.siprec import StreamRole


@dataclass(frozen=True)
class SiprecSession:
    """What the SIP thread learnt from a SIPREC INVITE: why it is one, and who each stream is.

    `roles` has one entry per audio stream the bridge answered (at most two), in m-line order;
    `roles[n]` describes the audio that arrives with stream index n.
    """

    evidence: tuple[str, ...]
    roles: tuple[StreamRole, ...]
    session_ids: tuple[str, ...] = ()
    group_id: str | None = None
    problems: tuple[str, ...] = ()
    framing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """For `call.started`."""
        return {
            "evidence": list(self.evidence),
            "roles": [role.as_dict() for role in self.roles],
            "session_ids": list(self.session_ids),
            "group_id": self.group_id,
            "problems": list(self.problems),
            "framing": list(self.framing),
        }


@dataclass(frozen=True)
class CallStarted:
    key: int
    call_id: str
    from_uri: str
    to_uri: str
    remote: str
    headers: tuple[tuple[str, str], ...]
    codecs: tuple[str, ...]
    siprec: SiprecSession | None = None  # None: a plain call, one stream
    route: str = DEFAULT_ROUTE  # the route the call took (sip.routing; the bridge picks its config by it)


@dataclass(frozen=True)
class CallStreams:
    """New rs-metadata arrived mid-call (re-INVITE or UPDATE): the streams' roles as now mapped."""

    key: int
    roles: tuple[StreamRole, ...]
    reason: str  # "re-INVITE" or "UPDATE"


@dataclass(frozen=True)
class CallMedia:
    key: int
    codec: str
    status: str  # active, remote_hold, local_hold, none
    stream: int = 0  # audio stream index (SIPREC calls have two)
    direction: str = ""  # what the bridge receives: "decoding" (audio flows), "none" (held)


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
    route: str = NO_ROUTE  # the route chosen before the refusal (sip.routing.NO_ROUTE: none was)


SipEvent = CallStarted | CallStreams | CallMedia | CallDtmf | CallEnded | InviteRejected
