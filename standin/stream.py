"""One /transcribe stream's audio path: bytes in, utterance cuts out. No I/O.

`StreamAudio.feed(data)` takes the socket's binary payloads in any split; `finish()` is the empty
frame. Both return `ChannelCut`s (one channel's utterance). Undecodable audio does not raise: the
first problem is kept in `warning`, later audio is ignored, and the final result says so. With
`scrubaudio`, the payload also goes to an `AudioScrubber` (standin/scrubber.py), which holds it until
`settled_frames` passes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from standin.audio import AudioError, AudioFormat, SampleDecoder, WaveParser
from standin.energy import EnergyMeter
from standin.scrubber import AudioScrubber
from standin.segmenter import Cut, Segmenter, VadParams
from standin.tags import Encoding, Tags


@dataclass(frozen=True)
class ChannelCut:
    channel: int
    samprate: int
    cut: Cut

    @property
    def start_s(self) -> float:
        return self.cut.start / self.samprate

    @property
    def end_s(self) -> float:
        return self.cut.end / self.samprate


class StreamAudio:
    """Decodes one stream's audio per its tags and segments each channel on its own."""

    def __init__(self, tags: Tags) -> None:
        self.tags = tags
        self.vad = VadParams(
            vadtype=tags.vadtype,
            activitylevel=tags.activitylevel,
            uttminactivity_ms=tags.uttminactivity_ms,
            uttmaxsilence_ms=tags.uttmaxsilence_ms,
            uttpadding_ms=tags.uttpadding_ms,
            uttmaxtime_s=tags.uttmaxtime_s,
        )
        self.warning: str | None = None
        self.bytes_received = 0
        self.frames_decoded = 0
        self._wave = WaveParser() if tags.datahdr_wave else None
        self._decoder: SampleDecoder | None = None
        self._segmenters: list[Segmenter] = []
        self.scrubber: AudioScrubber | None = None  # scrubaudio: the audio to send back, once settled
        self.meter: EnergyMeter | None = None  # --record-energy: what this stream heard, per second
        if self._wave is None:
            self._guard(self._start_raw)

    @property
    def format(self) -> AudioFormat | None:
        return self._decoder.format if self._decoder else None

    @property
    def audiosecs(self) -> float:
        fmt = self.format
        return self.frames_decoded / fmt.samprate if fmt else 0.0

    @property
    def settled_frames(self) -> int:
        """Frames before which every utterance has been cut (those still to come start later)."""
        return min((seg.settled for seg in self._segmenters), default=0)

    @property
    def failed(self) -> bool:
        return self.warning is not None

    def feed(self, data: bytes) -> list[ChannelCut]:
        self.bytes_received += len(data)
        if self.failed:
            return []
        cuts: list[ChannelCut] = []
        self._guard(lambda: cuts.extend(self._feed(data)))
        return cuts

    def finish(self) -> list[ChannelCut]:
        if self.failed:
            return []
        if self._decoder is None:
            self.warning = "missing data WAVE header" if self.bytes_received else "no audio received"
            return []
        if self._decoder.pending_bytes:
            self.warning = (
                f"{self._decoder.pending_bytes} bytes of a partial sample frame at the end were ignored"
            )
        return [
            ChannelCut(ch, seg.samprate, cut)
            for ch, seg in enumerate(self._segmenters)
            for cut in seg.finish()
        ]

    def _feed(self, data: bytes) -> list[ChannelCut]:
        if self._wave is not None:
            data = self._wave.feed(data)
            if self._decoder is None:
                if self._wave.format is None:
                    return []
                self._start(self._check_header(self._wave.format))
        assert self._decoder is not None
        if self.scrubber is not None:
            self.scrubber.feed(data)
        samples = self._decoder.decode(data)
        self.frames_decoded += len(samples)
        if self.meter is not None:
            self.meter.feed(samples, self._decoder.format.samprate)
        return [
            ChannelCut(ch, seg.samprate, cut)
            for ch, seg in enumerate(self._segmenters)
            for cut in seg.feed(samples[:, ch])
        ]

    def _guard(self, step: Callable[[], object]) -> None:
        try:
            step()
        except AudioError as exc:
            self.warning = str(exc)

    def _start_raw(self) -> None:
        tags = self.tags
        if tags.encoding is None:
            raise AudioError("datahdr=NONE needs the encoding tag; audio not processed")
        if tags.samprate is None:
            raise AudioError("datahdr=NONE needs the samprate tag; audio not processed")
        width = tags.sampwidth or (2 if tags.encoding is Encoding.PCM else 1)
        self._start(AudioFormat(tags.encoding, tags.samprate, width, tags.channels or 1, tags.big_endian))

    def _check_header(self, fmt: AudioFormat) -> AudioFormat:
        tags = self.tags
        for name, tag, header in (
            ("samprate", tags.samprate, fmt.samprate),
            ("sampwidth", tags.sampwidth, fmt.sampwidth),
            ("encoding", tags.encoding, fmt.encoding),
        ):
            if tag is not None and tag != header:
                raise AudioError(
                    f"{name} tag {tag} contradicts the WAVE header ({header}); audio not processed"
                )
        return fmt

    def _start(self, fmt: AudioFormat) -> None:
        self._decoder = SampleDecoder(fmt)
        self._segmenters = [Segmenter(fmt.samprate, self.vad) for _ in range(fmt.channels)]
        if self.tags.redaction.scrubaudio:
            r = self.tags.redaction
            self.scrubber = AudioScrubber(fmt, r.outfmt, r.mindist_s, r.offset_s, r.scrubsil)
