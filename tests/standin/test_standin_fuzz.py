"""The stand-in's parsers of what a client sends, attacked: tags (TagError only) and WAVE headers
(AudioError only), on random input, mutated valid input and headers with extreme field values.
"""

from __future__ import annotations

import itertools
import re
import struct
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from standin.audio import MAX_SAMPRATE, MIN_SAMPRATE, AudioError, SampleDecoder, WaveParser
from standin.tags import TagError, Tags, collect_tags, parse_tags
from tests.fixtures.fuzz import FUZZ, mutated, random_text

# --- tags -----------------------------------------------------------------------------------------

VALID_TAGS = {
    "realtime": "true",
    "outstream": "false",
    "datahdr": "NONE",
    "encoding": "SPCM",
    "samprate": "8000",
    "sampwidth": "2",
    "endian": "LITTLE",
    "channels": "2",
    "output": "json",
    "utterance_fmt": "text",
    "callback": "http://127.0.0.1:8080/done",
    "utterance_callback": "https://[::1]:8443/u",
    "vadtype": "level",
    "activitylevel": "175",
    "uttminactivity": "500",
    "uttmaxsilence": "800",
    "uttpadding": "300",
    "uttmaxtime": "150",
    "model": "eng1:callcenter",
    "requestid": "call-1@host",
    "scrubaudio": "false",
}
INT_TAGS = {"samprate", "sampwidth", "channels", "activitylevel", "uttminactivity", "uttmaxsilence"}
INT_TAGS |= {"uttpadding", "uttmaxtime"}
NAMES = st.sampled_from(sorted(VALID_TAGS)) | st.text(max_size=12)


def tags_or_error(raw: dict[str, str]) -> None:
    try:
        tags = parse_tags(raw)
    except TagError as exc:
        assert exc.tag and str(exc).startswith(exc.tag)
        return
    assert isinstance(tags, Tags)
    assert tags.samprate is None or 2000 <= tags.samprate <= 192000
    assert tags.channels in (None, 1, 2) and tags.sampwidth in (None, 1, 2, 3, 4)
    assert tags.model.strip() == tags.model and tags.model
    for name in INT_TAGS & raw.keys():  # an accepted number was written in ASCII digits
        assert re.fullmatch(r"[+-]?[0-9]+", raw[name].strip()), (name, raw[name])
    for url in (tags.callback, tags.utterance_callback):
        if url is not None:  # an accepted URL is one a client can connect to
            parts = urlsplit(url)
            assert parts.scheme in ("http", "https") and parts.hostname and parts.port != 0


@FUZZ
@given(st.dictionaries(NAMES, random_text(100), max_size=8))
def test_tags_random(raw: dict[str, str]) -> None:
    tags_or_error(raw)


@FUZZ
@given(st.sampled_from(sorted(VALID_TAGS)), st.data())
def test_tags_one_value_mutated(name: str, data: st.DataObject) -> None:
    tags_or_error({**VALID_TAGS, name: data.draw(mutated([VALID_TAGS[name]]))})


@FUZZ
@given(st.sampled_from(sorted(INT_TAGS | {"callback", "utterance_callback"})), st.data())
def test_tags_numbers_and_urls_mutated(name: str, data: st.DataObject) -> None:
    tags_or_error({**VALID_TAGS, name: data.draw(mutated([VALID_TAGS[name]]))})


@FUZZ
@given(
    st.lists(st.tuples(random_text(40), random_text(100)), max_size=6),
    st.lists(st.tuples(random_text(40), random_text(100)), max_size=6),
)
def test_collect_tags_then_parse(query: list[tuple[str, str]], headers: list[tuple[str, str]]) -> None:
    tags_or_error(collect_tags(query, [*headers, *(("X-Voci-" + k, v) for k, v in headers)]))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("samprate", "٨٠٠٠"),  # int() reads Arabic-Indic digits as 8000
        ("samprate", "8_000"),
        ("activitylevel", "9" * 5000),  # int() refuses more than 4300 digits with ValueError
        ("callback", "http://[::1"),  # urlsplit raised ValueError
        ("utterance_callback", "http://[zz]/"),
        ("callback", "http://host:99999/"),  # a port no socket can have
        ("callback", "http://host:x/"),
        ("callback", "http://host:0/"),
    ],
)
def test_tags_refused(name: str, value: str) -> None:
    with pytest.raises(TagError) as caught:
        parse_tags({name: value})
    assert caught.value.tag == name


def test_tags_still_accepted() -> None:
    tags = parse_tags({"samprate": " +8000 ", "callback": "http://[::1]:8080/x", "uttpadding": "-0"})
    assert tags.samprate == 8000 and tags.callback == "http://[::1]:8080/x"
    assert tags.uttpadding_ms == 0
    with pytest.raises(TagError):
        parse_tags({"uttmaxtime": "-1"})


# --- WAVE headers ---------------------------------------------------------------------------------


def wav_header(
    tag: int = 1,
    channels: int = 1,
    rate: int = 8000,
    block_align: int = 2,
    bits: int = 16,
    fmt_size: int = 16,
    data_size: int = 0xFFFFFFFF,
    extra: bytes = b"",
) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block_align & 0xFFFFFFFF, block_align, bits)
    fmt = (fmt + extra).ljust(fmt_size, b"\x00")[: max(fmt_size, 0)]
    return (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"\x00" * (fmt_size & 1)
        + b"data" + struct.pack("<I", data_size)
    )  # fmt: skip


PAYLOAD = np.arange(-400, 400, dtype="<i2").tobytes()
VALID_WAVS = [
    wav_header() + PAYLOAD,
    wav_header(channels=2, block_align=4, rate=16000, data_size=len(PAYLOAD))
    + PAYLOAD
    + b"LIST\x04\0\0\0junk",
    wav_header(tag=7, block_align=1, bits=8) + PAYLOAD,
    wav_header(tag=0xFFFE, fmt_size=40, extra=struct.pack("<HHI", 22, 16, 3) + struct.pack("<H", 1))
    + PAYLOAD,
    wav_header()[:36] + b"LIST" + struct.pack("<I", 5) + b"abcde\x00" + wav_header()[36:] + PAYLOAD,
]
U16 = st.integers(0, 0xFFFF) | st.sampled_from([0, 1, 2, 3, 0xFFFF])
U32 = st.integers(0, 0xFFFFFFFF) | st.sampled_from([0, 1, MIN_SAMPRATE - 1, MAX_SAMPRATE + 1, 0xFFFFFFFF])


def feed_or_error(data: bytes, cuts: list[int]) -> None:
    """Feed `data` cut at `cuts`: AudioError or payload that decodes, the same in any split."""
    whole = WaveParser()
    try:
        expected = whole.feed(data)
    except AudioError:
        expected = None
    parser = WaveParser()
    out = b""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            out += parser.feed(data[start:end])
    except AudioError:
        assert expected is None, "an error in one split only"
        return
    assert expected is not None and out == expected, "the split changed the result"
    if parser.format is not None:
        decoder = SampleDecoder(parser.format)
        samples = decoder.decode(out)
        assert samples.shape[1] == parser.format.channels
        assert samples.shape[0] * parser.format.frame_bytes + decoder.pending_bytes == len(out)


CUTS = st.lists(st.integers(0, 10_000), max_size=6)


@FUZZ
@given(st.binary(max_size=2048), CUTS)
def test_wave_random_bytes(data: bytes, cuts: list[int]) -> None:
    feed_or_error(data, cuts)
    feed_or_error(b"RIFF\xff\xff\xff\xffWAVE" + data, cuts)


@FUZZ
@given(U16, U16, U32, U16, U16, st.integers(0, 1100) | st.sampled_from([0xFFFFFFFF]), U32, CUTS)
def test_wave_extreme_header_fields(
    tag: int,
    channels: int,
    rate: int,
    block_align: int,
    bits: int,
    fmt_size: int,
    data_size: int,
    cuts: list[int],
) -> None:
    header = wav_header(tag, channels, rate, block_align, bits, min(fmt_size, 1100), data_size)
    if fmt_size > 1100:
        header = header[:16] + struct.pack("<I", fmt_size) + header[20:]
    feed_or_error(header + PAYLOAD, cuts)


@FUZZ
@given(st.sampled_from(VALID_WAVS), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4))
def test_wave_header_byte_flips(wav: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(wav)
    for at, value in flips:
        data[at % len(data)] = value
    feed_or_error(bytes(data), [7, 44])
    for end in (1, 11, 12, 20, 36, 43, 44, 45):  # cut short at every field boundary
        feed_or_error(bytes(data[:end]), [3])


@pytest.mark.parametrize(
    "header",
    [
        wav_header(channels=0),
        wav_header(channels=3, block_align=6),
        wav_header(rate=0),
        wav_header(rate=0xFFFFFFFF),
        wav_header(bits=0, block_align=0),
        wav_header(tag=2),
        wav_header(tag=0xFFFE, fmt_size=18),
        wav_header(fmt_size=8),
        wav_header(fmt_size=4096),
    ],
)
def test_wave_refused(header: bytes) -> None:
    with pytest.raises(AudioError):
        WaveParser().feed(header + PAYLOAD)


def test_the_samples_are_valid() -> None:
    assert parse_tags(VALID_TAGS).samprate == 8000
    for wav in VALID_WAVS:
        parser = WaveParser()
        assert parser.feed(wav).startswith(PAYLOAD[:2]) and parser.format is not None
