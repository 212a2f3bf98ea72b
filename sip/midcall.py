"""What a mid-call request of a SIPREC call changes (no I/O, no pjsua2).

A re-INVITE or UPDATE may carry new rs-metadata (RFC 7866 section 8.3): the recorded streams' roles are
mapped again from it, by the same rules as at the start (`sip.siprec.map_streams`). The pjsua thread
(`sip.endpoint`) hands each such request's bytes to `remap` and sends on what it returns.
"""

from __future__ import annotations

import logging

from sip.message import SipRequest
from sip.multipart import is_multipart
from sip.sdp import Offer, parse_offer
from sip.siprec import METADATA_TYPE, SiprecRules, StreamRole, map_streams, parse_body, parse_metadata

logger = logging.getLogger(__name__)


def remap(request: SipRequest, answered: Offer, rules: SiprecRules) -> tuple[StreamRole, ...] | None:
    """The streams' roles after a mid-call request, or None when it carries no rs-metadata.

    The body is multipart (SDP and metadata) or metadata alone (RFC 7866 allows an UPDATE with only
    the metadata); without an SDP, or with fewer audio m-lines than were answered, the m-lines of
    the answered offer stand.
    """
    content_type = request.header("content-type") or ""
    if request.content_type() == METADATA_TYPE:
        try:
            metadata = parse_metadata(request.body)
        except ValueError as exc:
            logger.warning("unreadable rs-metadata in a mid-call request: %s", exc)
            return None
        offer = answered
    elif is_multipart(content_type):
        body = parse_body(request)
        if body.metadata is None:
            return None
        metadata = body.metadata
        audio = parse_offer(body.sdp).audio if body.sdp else ()
        offer = Offer(audio[: len(answered.audio)]) if len(audio) >= len(answered.audio) else answered
    else:
        return None
    return tuple(map_streams(offer, metadata, rules))
