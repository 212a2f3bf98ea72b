"""Facts of the pjsua2-python wheel that size a worker, in one place and without pjsua2 (no I/O).

`bridge.config` (the most calls a worker may be given), `bridge.worker` (its RTP ports and capacity),
`sip.endpoint` (pjsua's configuration) and the benchmarks and end-to-end tests (the port blocks they
reserve) read them here instead of copying the numbers. Measured on the 2.15.1 wheel (see
`sip.endpoint`'s module docstring):

- `PJSUA_MAX_CALLS`: compiled into the wheel, and no registry ships the sources to rebuild it. When that
  many calls exist pjsua answers another INVITE 486 itself, before any callback sees it.
- a call takes one FramePort per audio stream it answers, at most `MAX_SIPREC_STREAMS` (SIPREC: the
  caller and the agent), and pjmedia a conference port per stream and call: `MAX_MEDIA_PORTS` leaves
  room for those, the FramePorts and the master port.
- `IOQUEUE_KEYS`: pjlib's ioqueue, where every SIP and RTP socket of a worker is registered, holds this
  many (the wheel's PJ_IOQUEUE_MAX_HANDLES; see `sip.sockets` for what running out of them does).
"""

from __future__ import annotations

PJSUA_MAX_CALLS = 4  # calls a pjsua process can hold (compile-time PJSUA_MAX_CALLS of the wheel)
MAX_SIPREC_STREAMS = 2  # audio streams a call is answered with: a SIPREC call's caller and agent, no more
FRAME_PORTS = MAX_SIPREC_STREAMS * PJSUA_MAX_CALLS  # FramePorts a worker creates once and lends to calls
MAX_MEDIA_PORTS = 4 * PJSUA_MAX_CALLS + 8  # maxMediaPorts: calls × 2 streams + the FramePorts + master
IOQUEUE_KEYS = 64  # sockets pjlib's ioqueue can hold (PJ_IOQUEUE_MAX_HANDLES; tests/sip/test_sockets.py)
RTP_PORTS_PER_WORKER = 40  # RTP ports a worker's account binds: sip.rtp_first_port + index × this


def rtp_ports(workers: int) -> int:
    """The block of RTP ports `workers` workers bind from `sip.rtp_first_port` on."""
    return RTP_PORTS_PER_WORKER * workers
