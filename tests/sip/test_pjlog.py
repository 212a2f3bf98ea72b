"""sip.pjlog: pjsip's log lines for messages it dropped, named by reason (pjsip 2.15's wording)."""

from __future__ import annotations

from sip.pjlog import SipDropReason, dropped_reason


def test_pjsip_drop_lines_are_named_and_other_lines_are_not() -> None:
    assert dropped_reason("Error processing packet from 127.0.0.1:5062: Rx buffer overflow") == (
        SipDropReason.OVERSIZED
    )
    assert dropped_reason("Dropping 120 bytes packet from UDP 127.0.0.1:5062 : PJSIP syntax error") == (
        SipDropReason.MALFORMED
    )
    assert dropped_reason("Error processing packet from 127.0.0.1:5062: Missing required header(s)") == (
        SipDropReason.MALFORMED
    )
    assert dropped_reason("Call 0: state changed to CONFIRMED") is None
