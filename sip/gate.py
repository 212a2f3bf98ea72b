"""A pjsip module ahead of pjsua's own: every new INVITE is screened, and refused, before a call exists;
every out-of-dialog OPTIONS is answered by the worker's readiness (pjsua alone would answer 200 always).

Why (measured on the pjsua2-python 2.15.1 wheel): refusing an INVITE from `onIncomingCall` with a
final `Call.answer()` aborted the worker (`pjsip_rx_data_free_cloned: Assertion 'rdata' failed`) after
488 for an INVITE without SDP, with no common codec or with a multipart body without boundary; and
pjsua answers a 5th INVITE 486 itself, before `onIncomingCall`. pjsua's own module ("mod-pjsua") sits at
PJSIP_MOD_PRIORITY_APPLICATION (64): a module with a lower number sees each request that no
transaction or dialog took (retransmissions and in-dialog requests are taken earlier, by the
transaction layer at 16 and the dialogs at 32), and returning PJ_TRUE ends its dispatch. So the gate
answers refusals with `pjsip_endpt_respond` (a UAS transaction of its own: retransmitted INVITEs get
the same answer, the ACK is absorbed) and no pjsua call object is ever made for a refused INVITE.

pjsua2 wraps none of this; the extension module exports the C functions, and `pjsip_module` is a
public struct. `pjsip_rx_data`'s layout depends on the build's PJSIP_MAX_PKT_LEN, so the offsets of
the message and its source are found once at start (`Gate.calibrate`): the endpoint sends itself a
probe and the gate finds, in the rdata that carries it, the pointer to the probe's bytes and the
probe socket's address. A build where that fails does not start.

Everything here runs on the pjsua thread (the endpoint polls with `threadCnt = 0`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from sip.errors import SipError

logger = logging.getLogger(__name__)

PRIORITY = 63  # one ahead of pjsua's PJSIP_MOD_PRIORITY_APPLICATION (64)
POINTER = ctypes.sizeof(ctypes.c_void_p)
# tp_info: pool, transport, tp_data, then pjsip_rx_data_op_key (pj_ioqueue_op_key_t: 32 + 2 pointers,
# and the rdata pointer); pkt_info starts with a pj_time_val (two longs), then the packet.
PACKET_OFFSET = 3 * POINTER + (34 * POINTER + POINTER) + 2 * ctypes.sizeof(ctypes.c_long)
MAX_PACKET = 70_000  # the largest PJSIP_MAX_PKT_LEN searched for
# From msg_info.msg_buf back to pkt_info.src_name (char[46]) and src_port (int), as the struct lays them.
SRC_NAME_BACK = 56
SRC_PORT_BACK = 8
T1_MS, T2_MS, T4_MS = 500, 4000, 5000  # RFC 3261's timer values

_RxCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_long)]


def pj_str(value: bytes) -> _PjStr:
    return _PjStr(value, len(value))


class _Module(ctypes.Structure):
    _fields_ = [
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", _RxCallback),
        ("on_rx_response", ctypes.c_void_p),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", ctypes.c_void_p),
        ("on_tsx_state", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class Incoming:
    """An out-of-dialog request as it arrived."""

    method: str
    raw: bytes
    source_ip: str
    source_port: int


@dataclass(frozen=True)
class Answer:
    """Refuse with this status; `headers` are added (Retry-After)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Incoming], Answer | None]  # None: let pjsua take it


@functools.cache
def library() -> ctypes.CDLL:
    """The pjsua2 extension module's C symbols (dlopen of the loaded module returns the same library)."""
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
    lib.pjsua_get_pjsip_endpt.argtypes = []
    lib.pjsip_endpt_register_module.restype = ctypes.c_int
    lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.pjsip_endpt_respond.restype = ctypes.c_int
    lib.pjsip_endpt_respond.argtypes = [
        ctypes.c_void_p,  # endpoint
        ctypes.c_void_p,  # tsx_user (our module)
        ctypes.c_void_p,  # rdata
        ctypes.c_int,  # status
        ctypes.c_void_p,  # reason (pj_str_t*)
        ctypes.c_void_p,  # header list
        ctypes.c_void_p,  # body
        ctypes.c_void_p,  # transaction out
    ]
    lib.pjsip_endpt_respond_stateless.restype = ctypes.c_int
    lib.pjsip_endpt_respond_stateless.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.pjsip_generic_string_hdr_create.restype = ctypes.c_void_p
    lib.pjsip_generic_string_hdr_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.pj_list_insert_before.restype = None
    lib.pj_list_insert_before.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.pjsip_endpt_unregister_module.restype = ctypes.c_int
    lib.pjsip_endpt_unregister_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.pjsip_tsx_set_timers.restype = None
    lib.pjsip_tsx_set_timers.argtypes = [ctypes.c_uint] * 4
    lib.pjsua_call_get_count.restype = ctypes.c_uint
    lib.pjsua_call_get_count.argtypes = []
    return lib


def set_transaction_timeout(seconds: float) -> None:
    """How long pjsip waits for an answer that never comes (Timer B/F/H; pjsip uses Timer D's value for
    them): an unACKed 2xx, a BYE to a peer that went away. pjsua keeps such a call's slot until then,
    even after the call was hung up (measured: 32 s, RFC 3261's 64 x T1, by default). T1, T2 and T4 keep
    RFC 3261's values. Call after libInit (which sets pjsip's defaults) on the pjsua thread."""
    library().pjsip_tsx_set_timers(T1_MS, T2_MS, T4_MS, int(seconds * 1000))


def pjsua_calls() -> int:
    """The calls pjsua holds a slot for, including ended ones whose transactions are not over."""
    return int(library().pjsua_call_get_count())


@dataclass(frozen=True)
class Layout:
    """Where, in a `pjsip_rx_data`, the message and its source are (found by `Gate.calibrate`)."""

    msg_buf: int
    msg_len: int
    src_name: int
    src_port: int


def find_layout(rdata: int, probe: bytes, probe_port: int) -> Layout:
    """Find the offsets in an rdata known to carry `probe`, sent from `probe_port`; SipError if not."""
    if ctypes.string_at(rdata + PACKET_OFFSET, len(probe)) != probe:
        raise SipError("the probe is not where pjsip_rx_data's packet should start")
    packet = rdata + PACKET_OFFSET
    start = PACKET_OFFSET + len(probe)
    start += -start % POINTER
    for offset in range(start, PACKET_OFFSET + MAX_PACKET, POINTER):
        if ctypes.c_void_p.from_address(rdata + offset).value != packet:
            continue
        if ctypes.c_int.from_address(rdata + offset + POINTER).value != len(probe):
            continue
        layout = Layout(offset, offset + POINTER, offset - SRC_NAME_BACK, offset - SRC_PORT_BACK)
        port = ctypes.c_int.from_address(rdata + layout.src_port).value
        if port != probe_port:
            raise SipError(f"pjsip_rx_data: source port {port} where the probe came from {probe_port}")
        return layout
    raise SipError("pjsip_rx_data: no msg_info.msg_buf pointing at the probe")


class Gate:
    """The module: `handler` decides each out-of-dialog INVITE and OPTIONS; refusals are answered here."""

    def __init__(self, handler: Handler, on_error: Callable[[], None]) -> None:
        self._lib = library()
        self._handler = handler
        self._on_error = on_error
        self._callback = _RxCallback(self._on_rx_request)  # kept: pjsip holds the pointer
        self._name = b"mod-vblaze-gate"
        self._module = _Module()
        self._module.name = pj_str(self._name)
        self._module.id = -1
        self._module.priority = PRIORITY
        self._module.on_rx_request = self._callback
        self._endpt: int | None = None
        self._layout: Layout | None = None
        self._probe: tuple[bytes, int] | None = None
        self._probe_error: BaseException | None = None

    def register(self) -> None:
        """Register with pjsip's endpoint; call after libStart on the pjsua thread."""
        endpt = self._lib.pjsua_get_pjsip_endpt()
        if not endpt:
            raise SipError("pjsua has no SIP endpoint yet")
        status = self._lib.pjsip_endpt_register_module(endpt, ctypes.byref(self._module))
        if status != 0:
            raise SipError(f"pjsip_endpt_register_module failed with status {status}")
        self._endpt = endpt

    def unregister(self) -> None:
        """Take the module out of pjsip before the library goes (the callback must not outlive us)."""
        if self._endpt is None:
            return
        status = self._lib.pjsip_endpt_unregister_module(self._endpt, ctypes.byref(self._module))
        self._endpt = None
        if status != 0:
            logger.warning("pjsip_endpt_unregister_module failed with status %d", status)

    def calibrate(self, send: Callable[[bytes], int], poll: Callable[[], None], timeout_polls: int) -> None:
        """Send a probe with `send` (returns the probe's source port), poll until it is seen."""
        probe = (
            "OPTIONS sip:gate-probe@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKgate{id(self):x}\r\n"
            "From: <sip:gate@127.0.0.1>;tag=probe\r\nTo: <sip:gate@127.0.0.1>\r\n"
            f"Call-ID: gate-probe-{id(self):x}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        port = send(probe)
        self._probe = (probe, port)
        for _ in range(timeout_polls):
            poll()
            if self._layout is not None or self._probe_error is not None:
                break
        self._probe = None
        if self._probe_error is not None:
            raise SipError(f"SIP gate calibration failed: {self._probe_error}")
        if self._layout is None:
            raise SipError("SIP gate calibration: the probe never arrived")
        logger.debug("SIP gate: %s", self._layout)

    # --- pjsip's callback ------------------------------------------------------------------------

    def _on_rx_request(self, rdata: int) -> int:
        try:
            return self._rx(rdata)
        except BaseException:  # nothing may unwind into pjsip's C stack
            logger.exception("SIP gate failed on a request; refusing it with 500")
            self._on_error()
            try:
                self._respond(rdata, Answer(500, "Server Internal Error"))
            except BaseException:
                logger.exception("SIP gate could not answer 500")
            return 1

    def _rx(self, rdata: int) -> int:
        if self._probe is not None:
            probe, port = self._probe
            if ctypes.string_at(rdata + PACKET_OFFSET, len(probe)) == probe:
                try:
                    self._layout = find_layout(rdata, probe, port)
                except SipError as exc:
                    self._probe_error = exc
                return 1  # the probe is ours: nobody answers it
        layout = self._layout
        if layout is None:
            return 0
        buf = ctypes.c_void_p.from_address(rdata + layout.msg_buf).value
        length = ctypes.c_int.from_address(rdata + layout.msg_len).value
        if not buf or not 0 < length <= MAX_PACKET:
            return 0
        raw = ctypes.string_at(buf, length)
        method = raw.split(b" ", 1)[0].decode("ascii", errors="replace")
        if method not in ("INVITE", "OPTIONS"):
            return 0
        incoming = Incoming(
            method,
            raw,
            ctypes.string_at(rdata + layout.src_name).decode("ascii", errors="replace"),
            ctypes.c_int.from_address(rdata + layout.src_port).value,
        )
        answer = self._handler(incoming)
        if answer is None:
            return 0
        self._respond(rdata, answer)
        return 1

    def _respond(self, rdata: int, answer: Answer) -> None:
        """Answer statefully (pjsip_endpt_respond); statelessly if pjsip cannot make a transaction."""
        endpt = self._endpt
        if endpt is None:
            return
        reason = pj_str(answer.reason.encode())
        head = _list_head()
        keep: list[Any] = [reason, head]
        pool = ctypes.c_void_p.from_address(rdata).value
        for name, value in answer.headers:
            hname, hvalue = pj_str(name.encode()), pj_str(value.encode())
            keep += [hname, hvalue]
            hdr = self._lib.pjsip_generic_string_hdr_create(pool, ctypes.byref(hname), ctypes.byref(hvalue))
            if hdr:
                self._lib.pj_list_insert_before(ctypes.addressof(head), hdr)
        headers = ctypes.addressof(head) if answer.headers else None
        status = self._lib.pjsip_endpt_respond(
            endpt, ctypes.byref(self._module), rdata, answer.status, ctypes.byref(reason), headers, None, None
        )
        if status != 0:
            status = self._lib.pjsip_endpt_respond_stateless(
                endpt, rdata, answer.status, ctypes.byref(reason), headers, None
            )
        if status != 0:
            logger.warning(
                "could not answer %d (pjsip status %d); the request is dropped", answer.status, status
            )
        del keep


def _list_head() -> ctypes.Array[ctypes.c_void_p]:
    """An empty pj_list head (a pjsip_hdr's first two members are its prev and next pointers)."""
    head = (ctypes.c_void_p * 8)()
    head[0] = head[1] = ctypes.addressof(head)
    return head
