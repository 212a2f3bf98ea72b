"""Coverage-guided fuzzing (atheris, libFuzzer) of the SIP parsers of untrusted bytes.

    pip install -e '.[fuzz]'
    python bench/fuzz_sip.py --minutes 5        # or --runs 200000

Each input's first byte picks a target, the rest is the untrusted text (UTF-8, undecodable bytes as
lone surrogates, as a str from a C library may carry them):

    0 sip.sdp.parse_offer                           may raise SdpError only
    1 sip.multipart split_multipart, framing_issues may raise nothing
    2 sip.siprec.parse_metadata, str and bytes      may raise MetadataError only
    3 sip.message.parse_request, then siprec_evidence, parse_body, parse_offer of its SDP and
      sip.admission.decide                          ValueError from parse_request, SdpError from
                                                    parse_offer, nothing from the others
    4 sip.screening.screen, the raw bytes as the    may raise nothing: a verdict for any bytes
      gate sees them

Any other exception, or one input slower than `--timeout` seconds, is a finding: libFuzzer prints
the traceback, writes the input to `--artifacts` (replay it with `python bench/fuzz_sip.py FILE`)
and the harness exits non-zero. Without a finding it prints how many inputs it ran and exits 0.
The seed corpus is the valid samples below; libFuzzer mutates them and keeps what reaches new code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from sip.admission import Policy, decide
    from sip.message import parse_request
    from sip.multipart import find_part, framing_issues, split_multipart
    from sip.routing import Match, Route, RouteTable
    from sip.screening import WorkerState, screen
    from sip.sdp import SdpError, parse_offer
    from sip.siprec import MetadataError, SiprecRules, parse_body, parse_metadata, siprec_evidence

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0 8 9 96 101\r\na=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendonly\r\na=label:1\r\n"
    "m=audio 4002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=label:2\r\nm=video 0 RTP/AVP 31\r\n"
)
METADATA = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<recording xmlns="urn:ietf:params:xml:ns:recording:1">\r\n'
    "<datamode>complete</datamode>\r\n"
    '<group group_id="7+OTCyoxTmqmqyA/1weDAg==">'
    "<associate-time>2010-12-16T23:41:07Z</associate-time></group>\r\n"
    '<session session_id="hVpd7YQgRW2nD22h7q60JQ=="><sipSessionID>ab30317f1a784dc48ff824d0d3715d86;'
    "remote=47755a9de7794ba387653f2099600ef2</sipSessionID><group-ref>7+OTCyoxTmqmqyA/1weDAg==</group-ref>"
    "</session>\r\n"
    '<participant participant_id="srfBElmCRp2QB23b7Mpk0w==">'
    '<nameID aor="sip:+15551230001@carrier.example.net"><name xml:lang="it">Caller</name></nameID>'
    "</participant>\r\n"
    '<participant participant_id="zSfPoSvdSDCmU3A3TRDxAw=="><nameID aor="sip:2001@pbx.example">'
    "<name>Agent</name></nameID></participant>\r\n"
    '<stream stream_id="UAAMm5GRQKSCMVvLyl4rFw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">'
    "<label>1</label></stream>\r\n"
    '<stream stream_id="i1Pz3to5hGk8fuXl+PbwCw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">'
    "<label>2</label></stream>\r\n"
    '<participantstreamassoc participant_id="srfBElmCRp2QB23b7Mpk0w==">'
    "<send>UAAMm5GRQKSCMVvLyl4rFw==</send><recv>i1Pz3to5hGk8fuXl+PbwCw==</recv>"
    "</participantstreamassoc>\r\n"
    '<participantstreamassoc participant_id="zSfPoSvdSDCmU3A3TRDxAw==">'
    "<send>i1Pz3to5hGk8fuXl+PbwCw==</send></participantstreamassoc>\r\n"
    "</recording>\r\n"
)
BOUNDARY = "OSS-unique-boundary-42"
MULTIPART_TYPE = f"multipart/mixed;boundary={BOUNDARY}"
MULTIPART = (
    f"--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{SDP}"
    f"--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\n"
    f"Content-Disposition: recording-session\r\n\r\n{METADATA}--{BOUNDARY}--\r\n"
)
HEADERS = (
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK74bf9\r\nMax-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@example.com>;tag=9fxced76sl\r\nTo: <sip:srs@127.0.0.1>\r\n'
    "i: 3848276298220188511@10.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:src@10.0.0.1>;+sip.src\r\n"
    "Subject: a folded\r\n  header\r\n"
)
INVITE_PLAIN = (
    f"INVITE sip:svc@127.0.0.1:5080 SIP/2.0\r\n{HEADERS}Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n\r\n{SDP}"
)
INVITE_SIPREC = (
    f"INVITE sip:srs@127.0.0.1:5080 SIP/2.0\r\n{HEADERS}Require: siprec\r\n"
    f"Content-Type: {MULTIPART_TYPE}\r\nContent-Length: {len(MULTIPART)}\r\n\r\n{MULTIPART}"
)
SEEDS = [
    (0, SDP),
    (1, f"{MULTIPART_TYPE}\n{MULTIPART}"),
    (1, f'multipart/mixed; Boundary = "{BOUNDARY}"\n{MULTIPART.replace(chr(13), "")}'),
    (2, METADATA),
    (3, INVITE_PLAIN),
    (3, INVITE_SIPREC),
    (4, INVITE_PLAIN),
    (4, INVITE_SIPREC),
]
POLICY = Policy(capacity=4, codecs=("PCMU", "PCMA", "G722"), retry_after=5, allow_from=("127.0.0.0/8",))
TARGETS = 5
IDLE = WorkerState(active_calls=0, draining=False, within_rate=True, engine_refuses=False)
RULES = SiprecRules()
ROUTES = RouteTable(  # every kind of condition, so screening exercises the route matcher too
    (
        Route("did", Match(to="1[0-9]{3}", header=("X-Queue", "^s"))),
        Route("caller", Match(from_=r"\+1.*", ruri="svc", source=("127.0.0.0/8",))),
        Route("recorder", Match(participant=r"sip:\+1555.*"), siprec_rules=SiprecRules(order=("mline",))),
        Route("rest", reject=404),
    )
)


def one_input(data: bytes) -> None:
    """Feed one input to the target its first byte picks; unexpected exceptions propagate."""
    if not data:
        return
    target, raw = data[0] % TARGETS, data[1:]
    text = raw.decode("utf-8", "surrogateescape")
    if target == 0:
        try:
            parse_offer(text)
        except SdpError:
            pass
    elif target == 1:
        content_type, _, body = text.partition("\n")
        parts = split_multipart(content_type, body)
        find_part(parts, "application/sdp")
        framing_issues(content_type, body)
    elif target == 2:
        for xml in (raw, text):
            try:
                parse_metadata(xml)
            except MetadataError:
                pass
    elif target == 4:
        screen(raw, "127.0.0.1", IDLE, POLICY, RULES, 2, ROUTES)
    else:
        try:
            request = parse_request(text)
        except ValueError:
            return
        siprec_evidence(request)
        siprec = parse_body(request)
        try:
            parse_offer(siprec.sdp)
        except SdpError:
            pass
        decide(request, "127.0.0.1", 0, False, POLICY)


class Budget:
    """Counts executions and ends the run, exit status 0, when the time or the run count is used up."""

    def __init__(self, seconds: float | None, runs: int | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds if seconds is not None else None
        self.runs = runs
        self.count = 0

    def __call__(self, data: bytes) -> None:
        one_input(data)
        self.count += 1
        if (self.runs is not None and self.count >= self.runs) or (
            self.deadline is not None and self.count % 256 == 0 and time.monotonic() >= self.deadline
        ):
            self.done()

    def done(self) -> None:
        elapsed = time.monotonic() - self.started
        print(f"fuzz_sip: {self.count} executions in {elapsed:.0f} s, no finding", flush=True)
        os._exit(0)  # libFuzzer would exit without running Python's shutdown; say so first


def write_seeds(directory: Path) -> None:
    for index, (target, text) in enumerate(SEEDS):
        (directory / f"seed-{index}").write_bytes(bytes([target]) + text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--minutes", type=float, help="stop after this long (default 5 unless --runs)")
    group.add_argument("--runs", type=int, help="stop after this many executions")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer seed (0: random)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--max-len", type=int, default=16384, help="longest input in bytes")
    parser.add_argument("--corpus", type=Path, default=Path("var/fuzz/corpus"), help="corpus to grow")
    parser.add_argument("--artifacts", type=Path, default=Path("var/fuzz"), help="where findings go")
    parser.add_argument("replay", nargs="*", type=Path, help="inputs to run once each, e.g. a finding")
    args = parser.parse_args()

    args.artifacts.mkdir(parents=True, exist_ok=True)
    libfuzzer = [
        sys.argv[0],
        f"-seed={args.seed}",
        f"-timeout={args.timeout}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={args.artifacts}/",
        "-print_final_stats=1",
    ]
    if args.replay:
        atheris.Setup([*libfuzzer, *map(str, args.replay)], one_input)
        atheris.Fuzz()
        return
    minutes = args.minutes if args.minutes is not None or args.runs is not None else 5.0
    budget = Budget(minutes * 60 if minutes is not None else None, args.runs)
    args.corpus.mkdir(parents=True, exist_ok=True)
    write_seeds(args.corpus)
    atheris.Setup([*libfuzzer, str(args.corpus)], budget)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
