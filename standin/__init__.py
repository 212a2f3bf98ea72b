"""A stand-in V-Blaze engine: the V-Blaze WebSocket API (`ws://HOST:17171/transcribe`) with real
recognition (faster-whisper tiny.en), for the demo and the tests.

Modules: `tags` (query/header tags, validation), `audio` (WAVE parser, PCM/G.711 decoding),
`segmenter` (level/energy VAD), `stream` (one stream's bytes → utterance cuts), `results` (JSON/text
documents), `redaction` (numtrans, scrubtext, scrubconf), `scrubber` (scrubbed audio: held until
settled, silenced, WAV or mp3), `faults` (fault switches) — none does I/O; `recognizer` (whisper in
a thread pool, vad-only) and `server` (aiohttp) do.

Behaviour chosen where the vendor docs are silent (details in the module docstrings and docs/standin.md):
- a tag given as header and in the query string takes the query's value; header names are
  case-insensitive and `-` in the tag part reads as `_`; enumerated values are case-insensitive;
- a bad tag value is refused with HTTP 400 text/plain naming the tag, capacity with 503, both before
  the upgrade; undecodable audio gives a final result with `warning` and no `audiosecs`;
- the server closes with 1000 after the final message; with `callback` the final result is POSTed
  instead and the socket closes with 1000 without it;
- `outstream` without `realtime` holds the utterances until the audio has ended; with `realtime`
  each one goes out as soon as it is recognized; `utterance_callback` POSTs as soon as recognized;
- streamed and callback utterances are the bare utterance object plus `text`; the final document's
  utterances carry no `text`;
- an empty frame of either opcode ends the audio; other text frames are ignored with a warning;
- the energy VAD (V-Blaze's default, undocumented) is 12 dB over a 3 s running minimum.
"""
