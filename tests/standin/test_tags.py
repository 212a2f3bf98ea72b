"""Tag collection and validation."""

from __future__ import annotations

import pytest

from standin.tags import (
    Encoding,
    Format,
    Redaction,
    TagError,
    VadType,
    collect_tags,
    parse_encoding,
    parse_tags,
)


def test_headers_match_case_insensitively_and_dashes_mean_underscores() -> None:
    raw = collect_tags(
        [], [("X-VOCI-OUTPUT", "text"), ("x-voci-Utterance-Callback", "http://h/u"), ("Host", "x")]
    )
    assert raw == {"output": "text", "utterance_callback": "http://h/u"}


def test_query_wins_over_header_and_x_request_id_is_requestid() -> None:
    raw = collect_tags([("output", "json")], [("X-Voci-Output", "text"), ("X-Request-Id", "r1")])
    assert raw == {"output": "json", "requestid": "r1"}


def test_defaults_are_vblaze_defaults() -> None:
    tags = parse_tags({})
    assert tags.datahdr_wave and tags.output is Format.JSON and tags.vadtype is VadType.ENERGY
    assert (tags.activitylevel, tags.uttminactivity_ms, tags.uttmaxsilence_ms) == (175, 500, 800)
    assert (tags.uttpadding_ms, tags.uttmaxtime_s) == (300, 150)
    assert not tags.realtime and not tags.outstream
    assert tags.redaction == Redaction(True, False, None, False, False, 0.3, 0.0, "mp3", False, False)
    assert (
        not tags.zipped and parse_tags({"scrubaudio": "true"}).zipped and parse_tags({"outzip": "zip"}).zipped
    )
    assert not parse_tags({"scrubaudio": "true", "realtime": "true"}).zipped


def test_outstream_defaults_to_realtime_unless_utterance_callback() -> None:
    assert parse_tags({"realtime": "TRUE"}).streams_utterances
    assert not parse_tags({"realtime": "true", "utterance_callback": "http://h/u"}).outstream
    assert not parse_tags({"realtime": "true", "outstream": "false"}).streams_utterances
    assert parse_tags({"outstream": "true"}).streams_utterances
    assert not parse_tags({"outstream": "true", "utterance_callback": "http://h/u"}).streams_utterances


@pytest.mark.parametrize(
    ("spelling", "encoding"),
    [("SPCM", Encoding.PCM), ("linear16", Encoding.PCM), ("ULAW", Encoding.ULAW), ("µ-law", Encoding.ULAW),
     ("mu-law", Encoding.ULAW), ("PCMU", Encoding.ULAW), ("g.711a", Encoding.ALAW), ("A-Law", Encoding.ALAW)],
)  # fmt: skip
def test_encoding_spellings(spelling: str, encoding: Encoding) -> None:
    assert parse_encoding(spelling) is encoding


@pytest.mark.parametrize(
    ("raw", "tag"),
    [({"samprate": "abc"}, "samprate"), ({"samprate": "10"}, "samprate"), ({"datahdr": "MP3"}, "datahdr"),
     ({"encoding": "opus"}, "encoding"), ({"endian": "middle"}, "endian"), ({"realtime": "yes"}, "realtime"),
     ({"output": "jsonlist"}, "output"), ({"vadtype": "neural"}, "vadtype"),
     ({"uttmaxtime": "0"}, "uttmaxtime"),
     ({"activitylevel": "40000"}, "activitylevel"), ({"callback": "ftp://x/y"}, "callback"),
     ({"outzip": "7z"}, "outzip"), ({"sampwidth": "9"}, "sampwidth"),
     ({"notext": "true"}, "notext"), ({"diarize": "true"}, "diarize"), ({"outzip": "rar"}, "outzip"),
     ({"numtrans": "yes"}, "numtrans"), ({"scrubtext": "1"}, "scrubtext"), ({"scrubconf": "[{"}, "scrubconf"),
     ({"scrubconf": '[{"regex": "("}]'}, "scrubconf")],
)  # fmt: skip
def test_bad_values_name_the_tag(raw: dict[str, str], tag: str) -> None:
    with pytest.raises(TagError) as err:
        parse_tags(raw)
    assert err.value.tag == tag and str(err.value).startswith(f"{tag}:")


def test_unknown_tags_are_kept_for_streamtags() -> None:
    tags = parse_tags({"model": "eng1:callcenter", "metadata": "call-7", "numtrans": "false"})
    assert tags.raw["metadata"] == "call-7" and tags.model == "eng1:callcenter"
