"""SIPREC (RFC 7865 metadata, RFC 7866 protocol) for a recording server (no I/O).

What this module decides, from the raw INVITE only:

1. `siprec_evidence(request)`: whether (and why) a request comes from a recording
   client (SRC): `Require`/`Supported: siprec`, a multipart body with rs-metadata, or a `+sip.src`
   Contact feature tag.
2. `parse_body(request)` → `SiprecBody`: the SDP and the rs-metadata out of the multipart body.
3. `parse_metadata(xml)` → `Metadata`: participants (nameID aor/name), streams (label), who sends
   which stream (`participantstreamassoc`, or `<send>` inside `<participant>` as in the pre-RFC
   drafts some SBCs still emit), session and group ids. Namespaces are matched by local name, a
   default namespace or a prefix both work, vendor extension elements are ignored, missing pieces
   are left empty. DTDs and entities are refused (`MetadataError`).
4. `map_streams(offer, metadata, rules)` → `[StreamRole]`: which audio m-line is the caller and
   which the agent, which channel each goes to, and a human-readable `reason`.

How roles are decided (`SiprecRules.order` is tried in turn; the first strategy that decides wins;
the default is metadata, then label):

- "metadata": each stream's label (a=label) is looked up in the metadata and the participant that
  sends it (`<send>`) is classified: first by `caller_patterns` / `agent_patterns` (regexes on AOR
  and name), then, with `number_forms` (the default), by the form of its address: a number in E.164
  form (``sip:+15551230001@…``, ``tel:+1…``, a name such as ``+1 555 123 0001``) is the caller, a short
  extension (2 to 6 digits, ``sip:2001@pbx``) is the agent. Nothing else in the metadata says who is
  who in every SBC style: participant order differs (CUBE lists the agent first), `<send>`/`<recv>`
  are symmetric, and the SIPREC INVITE's own From/To are the recording client and the recorder.
- "label": the a=label values are matched against `caller_labels` / `agent_labels`.
- "mline": the audio m-lines in order take the roles of `mline_order` (caller first by default); a
  guess, only tried when configured in `order`.

With two streams, one stream decided is enough: the other takes the other role. A strategy that
gives both streams the same role does not decide. When no strategy decides, the roles are "unknown"
and the channels follow the m-lines (0, 1). A single audio stream is a mixed recording: role
"mixed", channel 0. Channel is 0 for the caller and 1 for the agent. `StreamRole.decided_by` names
the strategy that decided (or "single_stream", "undecided"), `reason` says how.

Participants come from the metadata whenever it names the stream's sender, whichever strategy
decided the role.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Literal

from sip.message import SipRequest
from sip.multipart import find_part, framing_issues, is_multipart, split_multipart
from sip.sdp import AudioOffer, Offer

RECORDING_NS = "urn:ietf:params:xml:ns:recording:1"
DRAFT_NS = "urn:ietf:params:xml:ns:recording"  # pre-RFC drafts, still sent by older SBCs
METADATA_TYPE = "application/rs-metadata+xml"
SDP_TYPE = "application/sdp"
MAX_METADATA_BYTES = 256 * 1024
STRATEGIES = ("metadata", "label", "mline")
# The siprec.* defaults; bridge/config.py takes them from here (sip/ imports nothing of bridge/).
DEFAULT_ORDER: tuple[Literal["metadata", "label", "mline"], ...] = ("metadata", "label")  # mline: a guess
DEFAULT_MLINE_ORDER: tuple[Literal["caller", "agent"], ...] = ("caller", "agent")
DEFAULT_NUMBER_FORMS = True  # metadata: an E.164 sender is the caller, an extension the agent
E164 = re.compile(r"^\+[1-9]\d{6,14}$")  # a number in international form: the party outside
EXTENSION = re.compile(r"^\d{2,6}$")  # a short internal number: the agent's phone
VISUAL_SEPARATORS = re.compile(r"[\s\-.()]")  # as in "+1 (555) 123-0001"

Role = Literal["caller", "agent", "mixed", "unknown"]
CHANNEL: dict[str, int] = {"caller": 0, "agent": 1, "mixed": 0}
OTHER: dict[str, Role] = {"caller": "agent", "agent": "caller"}


class MetadataError(ValueError):
    """The rs-metadata is not XML we accept (malformed, too large, or carries a DTD/entities)."""


# --- detection -------------------------------------------------------------------------------------


def siprec_evidence(request: SipRequest) -> tuple[str, ...]:
    """Why this request looks like SIPREC (empty: it does not), for logs."""
    found: list[str] = []
    for name in ("require", "supported"):
        for _, value in (h for h in request.headers if h[0] == name):
            if "siprec" in {tag.strip().lower() for tag in value.split(",")}:
                found.append(f"{name.capitalize()}: siprec")
    content_type = request.header("content-type") or ""
    if is_multipart(content_type) and METADATA_TYPE in request.body.lower():
        found.append("multipart body with rs-metadata")
    contact = request.header("contact") or ""
    if re.search(r";\s*\+sip\.src\b", contact, re.IGNORECASE):
        found.append("Contact +sip.src")
    return tuple(dict.fromkeys(found))


def requires_siprec(request: SipRequest) -> bool:
    """The request carries `Require: siprec` (pjsua 2.15 answers it 420 unless told otherwise)."""
    return any(
        name == "require" and "siprec" in {t.strip().lower() for t in value.split(",")}
        for name, value in request.headers
    )


# --- metadata --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    participant_id: str
    aor: str | None = None
    name: str | None = None
    send: tuple[str, ...] = ()  # stream ids this participant sends
    recv: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.aor and self.name:
            return f"{self.name} <{self.aor}>"
        return self.aor or self.name or f"participant {self.participant_id}"

    def as_dict(self) -> dict[str, Any]:
        return {"participant_id": self.participant_id, "aor": self.aor, "name": self.name}


@dataclass(frozen=True)
class Stream:
    stream_id: str
    label: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class Metadata:
    datamode: str | None = None  # complete / partial
    group_id: str | None = None
    session_ids: tuple[str, ...] = ()
    sip_session_ids: tuple[str, ...] = ()
    participants: tuple[Participant, ...] = ()
    streams: tuple[Stream, ...] = ()

    def stream_for_label(self, label: str | None) -> Stream | None:
        if label is None:
            return None
        wanted = _norm_label(label)
        return next((s for s in self.streams if s.label is not None and _norm_label(s.label) == wanted), None)

    def senders(self, stream_id: str) -> tuple[Participant, ...]:
        return tuple(p for p in self.participants if stream_id in p.send)


def _norm_label(label: str) -> str:
    return label.strip().lower()


def _local(tag: Any) -> tuple[str, str]:
    """(namespace, local name) of an element tag; comments and PIs give ('', '')."""
    if not isinstance(tag, str):
        return "", ""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _ours(ns: str) -> bool:
    return ns in ("", RECORDING_NS, DRAFT_NS)


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag)[1].lower() == name and _ours(_local(c.tag)[0])]


def _text(element: ET.Element, name: str) -> str | None:
    for child in _children(element, name):
        if child.text and child.text.strip():
            return child.text.strip()
    return None


def _attr(element: ET.Element, *names: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key)[1].lower() in names and value.strip():
            return value.strip()
    return None


class _NoDoctypeBuilder(ET.TreeBuilder):
    """A tree builder that refuses a DOCTYPE in any encoding (entities can only be declared in one)."""

    def doctype(self, name: str, pubid: str, system: str) -> None:
        raise MetadataError("metadata carries a DTD or entity declarations; refused")


def parse_metadata(xml_text: str | bytes) -> Metadata:
    """Parse RFC 7865 recording metadata tolerantly; raise MetadataError if it cannot be read at all.

    MetadataError (a ValueError) is the only exception that escapes, whatever the bytes."""
    root = _recording_root(xml_text)
    group_id, session_ids, sip_session_ids = _sessions(root)
    streams = _streams(root)
    return Metadata(
        datamode=_text(root, "datamode"),
        group_id=group_id,
        session_ids=session_ids,
        sip_session_ids=sip_session_ids,
        participants=_participants(root, streams),
        streams=tuple(streams),
    )


def _recording_root(xml_text: str | bytes) -> ET.Element:
    """The <recording> element, parsed without DTDs or entities; MetadataError if there is none."""
    try:
        raw = xml_text.encode() if isinstance(xml_text, str) else xml_text
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise MetadataError(f"metadata is not valid Unicode: {exc}") from exc
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(f"metadata is {len(raw)} bytes, over {MAX_METADATA_BYTES}")
    lowered = raw.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise MetadataError("metadata carries a DTD or entity declarations; refused")
    parser = ET.XMLParser(target=_NoDoctypeBuilder())  # the check above misses UTF-16 and the like
    try:
        parser.feed(raw.strip())
        root = parser.close()
    except MetadataError:
        raise
    except ET.ParseError as exc:
        raise MetadataError(f"metadata is not well-formed XML: {exc}") from exc
    except (LookupError, ValueError) as exc:  # an encoding expat does not know or cannot read
        raise MetadataError(f"metadata cannot be decoded: {exc}") from exc
    if _local(root.tag)[1].lower() != "recording":
        found = root.find(".//{*}recording")
        if found is None:
            raise MetadataError(f"metadata root is <{_local(root.tag)[1]}>, not <recording>")
        root = found
    return root


def _sessions(root: ET.Element) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """The group id, the session ids and the SIP session ids."""
    group_id = None
    for group in _children(root, "group"):
        group_id = _attr(group, "group_id", "id")
    session_ids: list[str] = []
    sip_session_ids: list[str] = []
    for session in _children(root, "session"):
        sid = _attr(session, "session_id", "id")
        if sid:
            session_ids.append(sid)
        for name in ("sipsessionid", "sip-session-id"):
            sip_session_ids += [c.text.strip() for c in _children(session, name) if c.text and c.text.strip()]
        if group_id is None:
            group_id = _text(session, "group-ref")
    return group_id, tuple(session_ids), tuple(sip_session_ids)


def _streams(root: ET.Element) -> list[Stream]:
    streams: list[Stream] = []
    for stream in _children(root, "stream"):
        stream_id = _attr(stream, "stream_id", "id")
        label = _text(stream, "label")
        if stream_id is None and label is None:
            continue
        streams.append(Stream(stream_id or f"label:{label}", label, _attr(stream, "session_id", "session")))
    return streams


def _participants(root: ET.Element, streams: list[Stream]) -> tuple[Participant, ...]:
    """Each participant with its name and address and the streams it sends and receives."""
    send: dict[str, list[str]] = {}
    recv: dict[str, list[str]] = {}
    # RFC 7865 puts send/recv in participantstreamassoc; the drafts put them in participant.
    for assoc in [*_children(root, "participantstreamassoc"), *_children(root, "participant")]:
        pid = _attr(assoc, "participant_id", "id")
        if pid is None:
            continue
        send.setdefault(pid, []).extend(_all_text(assoc, "send"))
        recv.setdefault(pid, []).extend(_all_text(assoc, "recv"))

    sends, recvs = _resolve(send, streams), _resolve(recv, streams)
    participants: list[Participant] = []
    for index, participant in enumerate(_children(root, "participant")):
        pid = _attr(participant, "participant_id", "id") or f"#{index}"
        aor: str | None = None
        display: str | None = None
        for name_id in [*_children(participant, "nameid"), *_children(participant, "aor")]:
            aor = (
                aor
                or _attr(name_id, "aor")
                or (name_id.text.strip() if name_id.text and name_id.text.strip() else None)
            )
            display = display or _text(name_id, "name")
        display = display or _text(participant, "name")
        participants.append(
            Participant(
                participant_id=pid,
                aor=aor,
                name=display,
                send=sends.get(pid, ()),
                recv=recvs.get(pid, ()),
            )
        )
    return tuple(participants)


def _all_text(element: ET.Element, name: str) -> list[str]:
    return [c.text.strip() for c in _children(element, name) if c.text and c.text.strip()]


def _resolve(refs: dict[str, list[str]], streams: list[Stream]) -> dict[str, tuple[str, ...]]:
    """Each participant's stream references as stream ids, deduplicated in order; some SRCs put the
    label in <send> instead of the id. The lookups are built once: linear in the metadata's size."""
    ids = {s.stream_id for s in streams}
    by_label = {_norm_label(s.label): s.stream_id for s in streams if s.label is not None}
    return {
        pid: tuple(dict.fromkeys(ref if ref in ids else by_label.get(_norm_label(ref), ref) for ref in items))
        for pid, items in refs.items()
    }


# --- the INVITE body -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiprecBody:
    """The SDP and metadata of a (possibly) SIPREC request.

    `problems`: what was missing or unreadable; `framing`: how the multipart framing departs from
    RFC 2046 (see `sip.multipart.framing_issues`). Both for logs and `call.started`.
    """

    sdp: str
    metadata_xml: str | None
    metadata: Metadata | None
    problems: tuple[str, ...] = ()
    framing: tuple[str, ...] = ()

    @property
    def offer_hidden_from_pjsip(self) -> bool:
        """pjsip 2.15 will not find this SDP (measured: a multipart body without close delimiter)."""
        return bool(self.sdp) and "no close delimiter" in self.framing


def parse_body(request: SipRequest) -> SiprecBody:
    """Extract SDP and rs-metadata from the body (multipart or plain SDP), tolerating what is missing.

    Raises nothing: what cannot be read is named in `problems` (the SDP itself is not parsed here)."""
    content_type = request.header("content-type") or ""
    problems: list[str] = []
    if not is_multipart(content_type):
        return SiprecBody(request.body, None, None)
    parts = split_multipart(content_type, request.body)
    sdp_part = find_part(parts, SDP_TYPE)
    meta_part = find_part(parts, METADATA_TYPE) or next(
        (p for p in parts if p.disposition == "recording-session" or p.content_type.endswith("+xml")), None
    )
    if sdp_part is None:
        problems.append("no application/sdp part in the multipart body")
    if meta_part is None:
        problems.append("no rs-metadata part in the multipart body")
    metadata = None
    if meta_part is not None:
        try:
            metadata = parse_metadata(meta_part.body)
        except MetadataError as exc:
            problems.append(str(exc))
    return SiprecBody(
        sdp=sdp_part.body if sdp_part else "",
        metadata_xml=meta_part.body if meta_part else None,
        metadata=metadata,
        problems=tuple(problems),
        framing=framing_issues(content_type, request.body),
    )


# --- roles -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiprecRules:
    """How streams are mapped to caller and agent (config section `siprec:`)."""

    order: tuple[str, ...] = DEFAULT_ORDER
    agent_patterns: tuple[str, ...] = ()
    caller_patterns: tuple[str, ...] = ()
    agent_labels: tuple[str, ...] = ()
    caller_labels: tuple[str, ...] = ()
    mline_order: tuple[Role, ...] = DEFAULT_MLINE_ORDER
    number_forms: bool = DEFAULT_NUMBER_FORMS
    _compiled: tuple[tuple[re.Pattern[str], ...], tuple[re.Pattern[str], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        unknown = [s for s in self.order if s not in STRATEGIES]
        if unknown or not self.order:
            raise ValueError(f"siprec.order: {unknown or 'empty'}; choose from {', '.join(STRATEGIES)}")
        if sorted(self.mline_order) != ["agent", "caller"]:
            raise ValueError("siprec.mline_order must name caller and agent once each")
        compiled = []
        for key, patterns in (
            ("agent_patterns", self.agent_patterns),
            ("caller_patterns", self.caller_patterns),
        ):
            group = []
            for pattern in patterns:
                try:
                    group.append(re.compile(pattern, re.IGNORECASE))
                except re.error as exc:
                    raise ValueError(f"siprec.{key}: {pattern!r} is not a regex: {exc}") from exc
            compiled.append(tuple(group))
        object.__setattr__(self, "_compiled", (compiled[0], compiled[1]))


@dataclass(frozen=True)
class StreamRole:
    """One audio m-line of the offer and who it is.

    `index` is the position among the offer's audio m-lines (`Offer.audio[index]`), which is also the
    n-th audio entry of pjsua's `CallInfo.media`; `channel` is 0 (caller, mixed) or 1 (agent).
    """

    index: int
    label: str | None
    direction: str
    role: Role
    channel: int
    reason: str
    participants: tuple[Participant, ...] = ()
    stream_id: str | None = None
    decided_by: str = "undecided"  # metadata, label, mline, single_stream or undecided

    @property
    def participant(self) -> Participant | None:
        return self.participants[0] if self.participants else None

    def as_dict(self) -> dict[str, Any]:
        """For `call.started` and utterance events."""
        return {
            "index": self.index,
            "label": self.label,
            "direction": self.direction,
            "role": self.role,
            "channel": self.channel,
            "participants": [p.as_dict() for p in self.participants],
            "reason": self.reason,
            "decided_by": self.decided_by,
        }


@dataclass
class _Slot:
    offer: AudioOffer
    stream: Stream | None
    senders: tuple[Participant, ...]
    who: str  # how the stream is named in reasons


def map_streams(offer: Offer, metadata: Metadata | None, rules: SiprecRules) -> list[StreamRole]:
    """Map each audio m-line to a role and a channel, saying why (see the module docstring)."""
    slots = []
    for index, audio in enumerate(offer.audio):
        stream = metadata.stream_for_label(audio.label) if metadata else None
        senders = metadata.senders(stream.stream_id) if metadata and stream else ()
        who = f"stream label {audio.label!r}" if audio.label is not None else f"m-line {index} (no label)"
        slots.append(_Slot(audio, stream, senders, who))
    if not slots:
        return []
    if len(slots) == 1:
        slot = slots[0]
        names = ", ".join(p.describe() for p in slot.senders)
        by = f"; metadata: sent by {names}" if names else ""
        reason = f"single audio stream: mixed recording on channel 0{by}"
        return [_role(0, slot, "mixed", reason, "single_stream")]

    notes: list[str] = []
    for strategy in rules.order:
        roles, why = _STRATEGY[strategy](slots, metadata, rules)
        if roles is None:
            notes.append(f"{strategy}: {why}")
            continue
        skipped = f" (not decided by {'; '.join(notes)})" if notes else ""
        return [
            _role(i, slot, roles[i], f"{strategy}: {why[i]}{skipped}", strategy)
            for i, slot in enumerate(slots)
        ]
    reason = "no rule decided, roles unknown, channels by m-line: " + "; ".join(notes)
    return [_role(i, slot, "unknown", reason) for i, slot in enumerate(slots)]


def _role(index: int, slot: _Slot, role: Role, reason: str, decided_by: str = "undecided") -> StreamRole:
    return StreamRole(
        index=index,
        label=slot.offer.label,
        direction=slot.offer.direction,
        role=role,
        channel=CHANNEL.get(role, index),
        reason=reason,
        participants=slot.senders,
        stream_id=slot.stream.stream_id if slot.stream else None,
        decided_by=decided_by,
    )


_Result = tuple[list[Role] | None, Any]  # (roles, per-stream reasons) or (None, why not)


def _complete(decided: list[Role | None], why: list[str]) -> _Result:
    """Fill in the one undecided stream of two, or refuse a conflict."""
    known = [r for r in decided if r is not None]
    if not known:
        return None, None
    if len(decided) == 2 and len(known) == 1:
        i = decided.index(None)
        decided[i] = OTHER[known[0]]
        why[i] = f"{why[i]}; {decided[i]} because the other stream is the {known[0]}"
    if None in decided:
        return None, "some streams matched no rule"
    if len(set(decided)) != len(decided):
        return None, f"every stream matched {known[0]}"
    return [r for r in decided if r is not None], why


def _by_metadata(slots: list[_Slot], metadata: Metadata | None, rules: SiprecRules) -> _Result:
    if metadata is None:
        return None, "no metadata"
    if not metadata.participants:
        return None, "metadata names no participants"
    if not rules.agent_patterns and not rules.caller_patterns and not rules.number_forms:
        return None, "no agent_patterns or caller_patterns configured, number_forms off"
    agent_res, caller_res = rules._compiled
    decided: list[Role | None] = []
    why: list[str] = []
    for slot in slots:
        if slot.stream is None:
            decided.append(None)
            why.append(f"{slot.who} not in metadata")
            continue
        if not slot.senders:
            decided.append(None)
            why.append(f"{slot.who} has no sender in metadata")
            continue
        sender = slot.senders[0]
        text = f"participant {sender.describe()} sends {slot.who}"
        role: Role | None = None
        for key, role_name, patterns in (
            ("agent_patterns", "agent", agent_res),
            ("caller_patterns", "caller", caller_res),
        ):
            hit = next((p for p in patterns if _matches(p, sender)), None)
            if hit is not None:
                role = "agent" if role_name == "agent" else "caller"
                text += f"; {role} by rule '{key}' ({hit.pattern!r})"
                break
        if role is None and rules.number_forms:
            form = number_form(sender)
            if form is not None:
                role, how = form
                text += f"; {role} by its address form ({how})"
        decided.append(role)
        why.append(text)
    if all(r is None for r in decided):
        return None, "no participant matched a pattern or an address form (" + "; ".join(why) + ")"
    return _complete(decided, why)


def _matches(pattern: re.Pattern[str], participant: Participant) -> bool:
    return any(v is not None and pattern.search(v) for v in (participant.aor, participant.name))


def _user_part(address: str) -> str | None:
    """The user of a sip:/sips:/tel: URI, or the address itself, without visual separators."""
    text = address.strip().strip("<>")
    scheme, _, rest = text.partition(":")
    if scheme.lower() in ("sip", "sips"):
        user, at, _ = rest.partition("@")
        if not at:
            return None
        text = user.split(";", 1)[0]
    elif scheme.lower() == "tel":
        text = rest.split(";", 1)[0]
    return VISUAL_SEPARATORS.sub("", text)


def number_form(participant: Participant) -> tuple[Role, str] | None:
    """caller for an E.164 number, agent for a short extension (its AOR first, then its name)."""
    for value in (participant.aor, participant.name):
        user = _user_part(value) if value else None
        if user is None:
            continue
        if E164.match(user):
            return "caller", f"E.164 number {user}"
        if EXTENSION.match(user):
            return "agent", f"extension {user}"
    return None


def _by_label(slots: list[_Slot], metadata: Metadata | None, rules: SiprecRules) -> _Result:
    if all(slot.offer.label is None for slot in slots):
        return None, "the offer has no a=label"
    if not rules.agent_labels and not rules.caller_labels:
        return None, "no agent_labels or caller_labels configured"
    agents = {_norm_label(label) for label in rules.agent_labels}
    callers = {_norm_label(label) for label in rules.caller_labels}
    decided: list[Role | None] = []
    why: list[str] = []
    for slot in slots:
        label = _norm_label(slot.offer.label) if slot.offer.label is not None else None
        if label is not None and label in agents:
            decided.append("agent")
            why.append(f"{slot.who}; agent by rule 'agent_labels'")
        elif label is not None and label in callers:
            decided.append("caller")
            why.append(f"{slot.who}; caller by rule 'caller_labels'")
        else:
            decided.append(None)
            why.append(f"{slot.who} in neither caller_labels nor agent_labels")
    if all(r is None for r in decided):
        return None, "no label matched (" + "; ".join(why) + ")"
    return _complete(decided, why)


def _by_mline(slots: list[_Slot], metadata: Metadata | None, rules: SiprecRules) -> _Result:
    roles: list[Role] = []
    why: list[str] = []
    for index, slot in enumerate(slots):
        role: Role = rules.mline_order[index] if index < len(rules.mline_order) else "unknown"
        roles.append(role)
        why.append(f"{slot.who} is audio m-line {index}; {role} by m-line order")
    return roles, why


_STRATEGY = {"metadata": _by_metadata, "label": _by_label, "mline": _by_mline}
