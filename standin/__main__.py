"""`python -m standin` / `vblaze-standin`: parse arguments, wire the server, run until SIGTERM/SIGINT.

Prints exactly one line to stdout once listening: `standin ready ws://HOST:PORT/transcribe`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from standin import server as srv
from standin.faults import Faults
from standin.recognizer import DEFAULT_WORKERS, Recognizer, VadOnlyRecognizer, WhisperRecognizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vblaze-standin", description="Stand-in V-Blaze engine (WebSocket API).")
    p.add_argument("--host", default=srv.DEFAULT_HOST)
    p.add_argument("--port", type=int, default=srv.DEFAULT_PORT, help="0 picks a free port")
    p.add_argument("--max-streams", type=int, default=srv.DEFAULT_MAX_STREAMS)
    p.add_argument("--recognizer", choices=["whisper", "vad-only"], default="whisper")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="recognition threads")
    p.add_argument("--cpu-threads", type=int, default=1, help="CTranslate2 threads per worker")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--max-frame-bytes", type=int, default=srv.DEFAULT_MAX_FRAME_BYTES)
    p.add_argument("--max-stream-secs", type=float, default=srv.DEFAULT_MAX_STREAM_SECS)
    p.add_argument("--idle-timeout", type=float, default=srv.DEFAULT_IDLE_TIMEOUT)
    p.add_argument("--callback-timeout", type=float, default=srv.DEFAULT_CALLBACK_TIMEOUT)
    p.add_argument("--shutdown-grace", type=float, default=srv.DEFAULT_SHUTDOWN_GRACE)
    p.add_argument(
        "--fault-close-after", type=float, metavar="SECONDS", help="drop each stream after this much audio"
    )
    p.add_argument("--fault-delay-ms", type=int, default=0, metavar="M", help="delay every result by M ms")
    p.add_argument("--fault-refuse", action="store_true", help="answer 503 to every new stream")
    p.add_argument(
        "--record-energy", action="store_true", help="/status shows each stream's peak per second (tests)"
    )
    p.add_argument(
        "--fault-refuse-scrubaudio",
        action="store_true",
        help="answer 400 naming scrubaudio to streams asking it",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> srv.ServerOptions:
    return srv.ServerOptions(
        host=args.host,
        port=args.port,
        max_streams=args.max_streams,
        max_frame_bytes=args.max_frame_bytes,
        max_stream_secs=args.max_stream_secs,
        idle_timeout=args.idle_timeout,
        callback_timeout=args.callback_timeout,
        shutdown_grace=args.shutdown_grace,
        faults=Faults(
            close_after=args.fault_close_after,
            delay_ms=args.fault_delay_ms,
            refuse=args.fault_refuse,
            refuse_scrubaudio=args.fault_refuse_scrubaudio,
        ),
        record_energy=args.record_energy,
    )


def recognizer_from(args: argparse.Namespace) -> Recognizer:
    if args.recognizer == "vad-only":
        return VadOnlyRecognizer()
    return WhisperRecognizer(workers=args.workers, cpu_threads=args.cpu_threads, beam_size=args.beam_size)


async def serve(options: srv.ServerOptions, recognizer: Recognizer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logging.getLogger("standin").warning("second signal: exiting now")
            sys.exit(1)
        logging.getLogger("standin").info("signal %d: stopping", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    server = srv.StandinServer(options, recognizer)
    await server.start()
    print(f"standin ready {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        options = options_from(args)
    except ValueError as exc:
        sys.exit(f"vblaze-standin: {exc}")
    uvloop.run(serve(options, recognizer_from(args)))  # as the bridge runs; see docs/standin.md, load


if __name__ == "__main__":
    main()
