"""Word error rate and real-time factor of the stand-in engine on a generated corpus.

Sentences are spoken by espeak-ng in several voices, converted to 8 kHz 16-bit WAV with sox, and sent
over a real WebSocket to an in-process stand-in with the whisper recognizer (tiny.en, int8).
WER = (substitutions + deletions + insertions) / reference words, over the whole corpus, after
lower-casing and dropping punctuation. RTF = wall time to get every final result / seconds of audio,
with the streams sent one at a time as fast as the socket takes them.

    .venv/bin/python bench/standin_bench.py [--workers 2] [--beam-size 1] [--voices en-us,en-gb]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from standin.recognizer import WhisperRecognizer
from standin.server import ServerOptions, running
from tests.fixtures.audio import speech_wav
from tests.standin.wsclient import pieces, transcribe

SENTENCES = [
    "Please call me back tomorrow morning about the billing question on my account.",
    "I would like to pay my bill with a credit card today.",
    "The package was supposed to arrive last week but it never came.",
    "Can you tell me how to reset the password for my online account?",
    "My internet connection keeps dropping every evening after dinner.",
    "I want to cancel my subscription and get a refund for this month.",
    "Thank you for calling, how can I help you today?",
    "The technician will visit your home between noon and four in the afternoon.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp"]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


async def bench(args: argparse.Namespace) -> None:
    corpus = [(s, v, speech_wav(s, rate=8000, voice=v)) for v in args.voices.split(",") for s in SENTENCES]
    audiosecs = 0.0
    for _, _, path in corpus:
        with wave.open(str(path)) as w:
            audiosecs += w.getnframes() / w.getframerate()
    recognizer = WhisperRecognizer(
        workers=args.workers, cpu_threads=args.cpu_threads, beam_size=args.beam_size
    )
    async with running(ServerOptions(port=0), recognizer) as srv:
        await transcribe(srv.url, [corpus[0][2].read_bytes()])  # warm-up: model load and first inference
        errors = ref_words = 0
        per_voice: dict[str, list[int]] = {}
        started = time.monotonic()
        for sentence, voice, path in corpus:
            s = await transcribe(srv.url, pieces(path.read_bytes(), 3200), query="output=text")
            ref, hyp = words(sentence), words(s.final)
            err = edit_distance(ref, hyp)
            errors += err
            ref_words += len(ref)
            per_voice.setdefault(voice, [0, 0])
            per_voice[voice][0] += err
            per_voice[voice][1] += len(ref)
            if args.verbose:
                print(f"  [{voice}] {s.final!r}")
        wall = time.monotonic() - started
    print(
        f"corpus: {len(corpus)} utterances, {len(args.voices.split(','))} voices, "
        f"{audiosecs:.1f} s of 8 kHz audio"
    )
    print(
        f"recognizer: faster-whisper tiny.en int8, workers={args.workers}, cpu_threads={args.cpu_threads}, "
        f"beam_size={args.beam_size}"
    )
    for voice, (err, n) in per_voice.items():
        print(f"  WER {voice:12s} {100 * err / n:5.1f} %")
    print(f"WER: {100 * errors / ref_words:.1f} % ({errors} errors / {ref_words} words)")
    print(f"RTF: {wall / audiosecs:.3f} ({wall:.1f} s wall for {audiosecs:.1f} s of audio)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--voices", default=",".join(VOICES))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    asyncio.run(bench(p.parse_args()))


if __name__ == "__main__":
    main()
