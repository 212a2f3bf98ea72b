"""sip.gate's layout search, on memory laid out as pjsip_rx_data is (the live calibration runs in every
worker start, so every e2e test exercises it against the real library)."""

from __future__ import annotations

import ctypes

import pytest

from sip.errors import SipError
from sip.gate import MAX_PACKET, PACKET_OFFSET, POINTER, SRC_NAME_BACK, SRC_PORT_BACK, Layout, find_layout

PROBE = b"OPTIONS sip:gate-probe@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def rdata(
    max_pkt_len: int, port: int, probe: bytes = PROBE, point: bool = True
) -> ctypes.Array[ctypes.c_char]:
    """A zeroed block with the probe as the packet and, after PJSIP_MAX_PKT_LEN bytes of it, the source
    and the msg_info pointer as pjsip_rx_data has them."""
    block = ctypes.create_string_buffer(PACKET_OFFSET + MAX_PACKET + 4096)
    base = ctypes.addressof(block)
    ctypes.memmove(base + PACKET_OFFSET, probe, len(probe))
    msg_buf = PACKET_OFFSET + max_pkt_len + 104  # zero, len, src_addr, src_addr_len, src_name, src_port
    ctypes.memmove(base + msg_buf - SRC_NAME_BACK, b"127.0.0.1\x00", 10)
    ctypes.c_int.from_address(base + msg_buf - SRC_PORT_BACK).value = port
    if point:
        ctypes.c_void_p.from_address(base + msg_buf).value = base + PACKET_OFFSET
        ctypes.c_int.from_address(base + msg_buf + POINTER).value = len(probe)
    return block


@pytest.mark.parametrize("max_pkt_len", [2000, 4000, 6000, 32000])
def test_the_layout_is_found_whatever_the_build_packet_size(max_pkt_len: int) -> None:
    block = rdata(max_pkt_len, 40123)
    layout = find_layout(ctypes.addressof(block), PROBE, 40123)
    offset = PACKET_OFFSET + max_pkt_len + 104
    assert layout == Layout(offset, offset + POINTER, offset - SRC_NAME_BACK, offset - SRC_PORT_BACK)
    assert ctypes.string_at(ctypes.addressof(block) + layout.src_name) == b"127.0.0.1"


def test_a_layout_that_does_not_check_out_refuses_to_start() -> None:
    with pytest.raises(SipError, match="source port"):
        find_layout(ctypes.addressof(rdata(4000, 40123)), PROBE, 40999)
    with pytest.raises(SipError, match="probe is not where"):
        find_layout(ctypes.addressof(rdata(4000, 40123, probe=b"X" * len(PROBE))), PROBE, 40123)
    with pytest.raises(SipError, match="no msg_info"):
        find_layout(ctypes.addressof(rdata(4000, 40123, point=False)), PROBE, 40123)
