"""Configuration: frozen, validated data loaded from one YAML file.

Every key has a named default below and a one-line comment in `bridge/assets/config.yaml`
(`vblaze-bridge print-config`). Unknown keys are rejected.
`load_config` raises `ConfigError` with the file, the dotted key and what was expected, before any port
is bound. Secrets never live in the file: the file names an environment variable instead.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.errors import ConfigError
from bridge.pause import check_sequence
from sip import siprec
from sip.limits import PJSUA_MAX_CALLS
from sip.routing import DEFAULT_ROUTE, NO_ROUTE, REJECT_STATUSES
from sip.siprec import SiprecRules

# Where workers write their metric files; prometheus_client reads it when it is first imported.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_SIP_HOST = "127.0.0.1"
DEFAULT_SIP_FIRST_PORT = 5080
DEFAULT_WORKERS = 2
DEFAULT_CALLS_PER_WORKER = PJSUA_MAX_CALLS  # as many as pjsua2-python's wheel can hold
DEFAULT_SPAWN: Literal["fork", "exec"] = "fork"  # workers forked from a warm parent (bridge/zygote.py)
DEFAULT_RTP_FIRST_PORT = 20000
DEFAULT_RETRY_AFTER_SECONDS = 5
DEFAULT_RTP_TIMEOUT_SECONDS = 60.0
DEFAULT_ACK_TIMEOUT_SECONDS = 5.0
DEFAULT_FIRST_RTP_TIMEOUT_SECONDS = 10.0
DEFAULT_TRANSACTION_TIMEOUT_SECONDS = 8.0
DEFAULT_INVITE_RATE = 20.0
DEFAULT_INVITE_BURST = 40
DEFAULT_SAMPLE_RATE: Literal[8000, 16000] = 8000
DEFAULT_CHUNK_MS = 100
DEFAULT_PORT_FRAME_MS = 100
DEFAULT_ENGINE_URL = "ws://127.0.0.1:17171/transcribe"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_FINAL_TIMEOUT = 30.0
DEFAULT_SEND_TIMEOUT = 5.0
DEFAULT_RECONNECT_INITIAL = 0.5
DEFAULT_RECONNECT_MAX = 10.0
DEFAULT_BUFFER_SECONDS = 60.0
DEFAULT_REPLAY_SECONDS = 15.0
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9400
DEFAULT_DRAIN_SECONDS = 30.0
DEFAULT_WEBHOOK_TIMEOUT = 5.0
DEFAULT_WEBHOOK_BACKOFF_INITIAL = 0.5
DEFAULT_WEBHOOK_BACKOFF_MAX = 60.0
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SPOOL_WARN_FRACTION = 0.8
DEFAULT_CLAIM_INTERVAL = 10.0
DEFAULT_SIPREC_ORDER = siprec.DEFAULT_ORDER  # the siprec.* defaults are sip.siprec's, the lower layer
DEFAULT_SIPREC_MLINE_ORDER = siprec.DEFAULT_MLINE_ORDER
DEFAULT_SIPREC_NUMBER_FORMS = siprec.DEFAULT_NUMBER_FORMS
DEFAULT_SIPREC_DELIVERY: Literal["stereo", "streams"] = "stereo"
# --- pause (PCI) and the control API ---
DEFAULT_DTMF_PAUSE = "*1"
DEFAULT_DTMF_RESUME = "*2"
DEFAULT_DTMF_HOLD_SECONDS = 2.0
DEFAULT_AUTO_RESUME_SECONDS = 0.0
DEFAULT_REASON_MAX_LENGTH = 200
MAX_REASON_LENGTH = 1000  # no config may allow longer: the reason travels on the control channel's lines
DEFAULT_CONTROL_HOST = "127.0.0.1"
DEFAULT_CONTROL_PORT = 9401
DEFAULT_CONTROL_TIMEOUT = 2.0
DEFAULT_REDACTION_TEXT = False
DEFAULT_REDACTION_AUDIO = False
DEFAULT_SCRUB_REPL = "#"  # V-Blaze's default replacement of a scrubconf rule
MAX_SCRUB_RULES = 32
MAX_SCRUB_RULE_CHARS = 512
DEFAULT_RECORDING_ENABLED = False
DEFAULT_RECORDING_DIRECTORY = "var/recordings"
DEFAULT_RECORDING_FORMAT: Literal["wav"] = "wav"
# --- NATS JetStream (bridge/nats/, docs/nats.md) ---
DEFAULT_NATS_STREAM = "VBLAZE"
DEFAULT_NATS_SUBJECT_PREFIX = "vblaze"
DEFAULT_NATS_REPLICAS = 1
DEFAULT_NATS_RETENTION: Literal["limits", "interest", "workqueue"] = "limits"
DEFAULT_NATS_MAX_AGE = 7 * 24 * 3600.0  # seconds a message is kept; 0 = for ever
DEFAULT_NATS_DUPLICATE_WINDOW = 3600.0  # JetStream dedupes a Nats-Msg-Id seen within this window
DEFAULT_NATS_CONNECT_TIMEOUT = 5.0
DEFAULT_NATS_PUBLISH_TIMEOUT = 5.0
DEFAULT_NATS_RECONNECT_WAIT = 1.0

MAX_CALLS_PER_WORKER = PJSUA_MAX_CALLS
# Tags the bridge sets on every request itself; engine.tags may not override them.
BRIDGE_TAGS = (
    "realtime",
    "outstream",
    "output",
    "utterance_fmt",
    "datahdr",
    "encoding",
    "samprate",
    "sampwidth",
    "endian",
    "requestid",
    *("scrubtext", "scrubaudio", "scrubconf", "scruboutfmt"),  # from redaction.* (see REDACTION_TAGS)
)
# The redaction tags the bridge sets, and where each comes from (named in the error for engine.tags).
REDACTION_TAGS = {
    "scrubtext": "use redaction.text",
    "scrubaudio": "use redaction.audio",
    "scrubconf": "use redaction.rules",
    "scruboutfmt": "always wav: the bridge reads the scrubbed audio as PCM",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SipConfig(_Section):
    host: str = DEFAULT_SIP_HOST  # address the workers bind for SIP and RTP
    first_port: int = Field(DEFAULT_SIP_FIRST_PORT, ge=1, le=65535)  # worker i listens on first_port + i
    workers: int = Field(DEFAULT_WORKERS, ge=1, le=512)
    calls_per_worker: int = Field(DEFAULT_CALLS_PER_WORKER, ge=1, le=MAX_CALLS_PER_WORKER)
    spawn: Literal["fork", "exec"] = DEFAULT_SPAWN  # fork: from the zygote; exec: a fresh interpreter each
    memory_merge: bool = True  # mark the workers' memory for the host's KSM (bridge/memory_merge.py)
    transports: tuple[Literal["udp", "tcp"], ...] = ("udp", "tcp")
    codecs: tuple[Literal["PCMU", "PCMA", "G722"], ...] = ("PCMU", "PCMA", "G722")
    rtp_first_port: int = Field(DEFAULT_RTP_FIRST_PORT, ge=1024, le=65000)
    retry_after_seconds: int = Field(DEFAULT_RETRY_AFTER_SECONDS, ge=0, le=3600)
    rtp_timeout_seconds: float = Field(DEFAULT_RTP_TIMEOUT_SECONDS, gt=0)  # hang up after RTP stopped so long
    ack_timeout_seconds: float = Field(DEFAULT_ACK_TIMEOUT_SECONDS, gt=0)  # answered, never ACKed: hang up
    first_rtp_timeout_seconds: float = Field(
        DEFAULT_FIRST_RTP_TIMEOUT_SECONDS, gt=0
    )  # answered, expecting RTP, none ever arrived: hang up
    transaction_timeout_seconds: float = Field(
        DEFAULT_TRANSACTION_TIMEOUT_SECONDS, ge=1, le=32
    )  # a call's slot is held until its transactions end: pjsip's Timer B/F/H (RFC 3261: 32 s)
    calls_per_source: int = Field(0, ge=0, le=MAX_CALLS_PER_WORKER)  # one source's calls a worker; 0 = no cap
    allow_from: tuple[str, ...] = ()  # CIDR allow-list for INVITE sources (403 otherwise); empty = everyone
    invite_rate_per_source: float = Field(
        DEFAULT_INVITE_RATE, ge=0
    )  # INVITEs/s one source may send; 0 = no limit
    invite_burst_per_source: int = Field(DEFAULT_INVITE_BURST, ge=1)  # INVITEs one source may send at once
    headers: tuple[str, ...] = ()  # SIP headers copied into call.started

    @field_validator("allow_from")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a CIDR network") from exc
        return value

    @field_validator("codecs", "transports")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one")
        return value


class AudioConfig(_Section):
    sample_rate: Literal[8000, 16000] = DEFAULT_SAMPLE_RATE  # PCM rate sent to the engine
    chunk_ms: int = Field(DEFAULT_CHUNK_MS, ge=10, le=2000)  # audio per WebSocket write
    port_frame_ms: int = Field(DEFAULT_PORT_FRAME_MS, ge=10, le=200)  # pjsua2 media port frame length


class EngineConfig(_Section):
    url: str = DEFAULT_ENGINE_URL  # ws://HOST:17171/transcribe
    datahdr: Literal["NONE", "WAVE"] = "NONE"  # NONE: raw PCM with encoding tags; WAVE: streaming WAV header
    tags: dict[str, str | int | float | bool] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "vadtype": "level",
            "activitylevel": 175,
            "uttminactivity": 500,
            "uttmaxsilence": 800,
            "uttpadding": 300,
            "uttmaxtime": 15,
            "uttmaxgap": 0,
        }
    )  # extra V-Blaze tags sent as X-Voci-* headers
    connect_timeout_seconds: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0)
    send_timeout_seconds: float = Field(DEFAULT_SEND_TIMEOUT, gt=0)
    final_timeout_seconds: float = Field(
        DEFAULT_FINAL_TIMEOUT, gt=0
    )  # wait for the final transcript after BYE
    reconnect_initial_seconds: float = Field(DEFAULT_RECONNECT_INITIAL, gt=0)
    reconnect_max_seconds: float = Field(DEFAULT_RECONNECT_MAX, gt=0)
    buffer_seconds: float = Field(DEFAULT_BUFFER_SECONDS, ge=1)  # audio kept while the engine is unreachable
    replay_seconds: float = Field(DEFAULT_REPLAY_SECONDS, ge=0)  # audio kept for replay after a lost socket
    on_unreachable: Literal["answer", "reject"] = "answer"  # engine down at call start

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith("ws://"):
            raise ValueError("must start with ws:// (V-Blaze does not support wss)")
        return value

    @field_validator("tags")
    @classmethod
    def _reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(BRIDGE_TAGS) & {k.lower() for k in value})
        if clash:
            raise ValueError(
                f"{', '.join(clash)} set by the bridge itself and cannot be overridden{_use(clash)}"
            )
        return value

    @model_validator(mode="after")
    def _backoff(self) -> EngineConfig:
        if self.reconnect_max_seconds < self.reconnect_initial_seconds:
            raise ValueError("engine.reconnect_max_seconds must be >= engine.reconnect_initial_seconds")
        return self


def _use(tags: list[str]) -> str:
    """Where to set what a clashing redaction tag would have said."""
    keys = [f"{tag}: {REDACTION_TAGS[tag]}" for tag in tags if tag in REDACTION_TAGS]
    return f" ({'; '.join(keys)})" if keys else ""


class ScrubRule(_Section):
    """One scrubconf rule: each word the engine recognises that matches `regex` becomes `repl`."""

    regex: str = Field(min_length=1, max_length=MAX_SCRUB_RULE_CHARS)
    repl: str = Field(DEFAULT_SCRUB_REPL, max_length=MAX_SCRUB_RULE_CHARS)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _regex(value)  # one check and one message for every regex in the config
        return value


class RedactionConfig(_Section):
    """What the engine redacts (V-Blaze's scrub tags). Self-contained: a route may carry its own."""

    text: bool = DEFAULT_REDACTION_TEXT  # scrubtext=true: numbers in utterances and transcripts become #
    audio: bool = DEFAULT_REDACTION_AUDIO  # scrubaudio=true: the engine streams the audio back, scrubbed
    rules: tuple[ScrubRule, ...] | None = Field(
        None, max_length=MAX_SCRUB_RULES
    )  # scrubconf: replaces the engine's default rules; None = the engine's own

    def tags(self, scrub_audio: bool = True) -> list[tuple[str, str | bool]]:
        """The engine tags this asks for (`scrub_audio` False: the engine refused scrubaudio)."""
        tags: list[tuple[str, str | bool]] = []
        if self.text:
            tags.append(("scrubtext", True))
        if self.audio and scrub_audio:
            tags += [("scrubaudio", True), ("scruboutfmt", "wav")]
        if self.rules is not None:
            rules = [{"regex": rule.regex, "repl": rule.repl} for rule in self.rules]
            tags.append(("scrubconf", json.dumps(rules, separators=(",", ":"))))
        return tags


class RecordingConfig(_Section):
    """Redacted call recordings (bridge/recording.py). Self-contained: a route may carry its own."""

    enabled: bool = DEFAULT_RECORDING_ENABLED  # write each call's scrubbed audio (needs redaction.audio)
    directory: str = DEFAULT_RECORDING_DIRECTORY  # where the WAV files go (one per call, or per stream)
    format: Literal["wav"] = DEFAULT_RECORDING_FORMAT  # 16-bit PCM WAV at audio.sample_rate


class SinkConfig(_Section):
    kind: Literal["jsonl", "webhook", "nats"] = "jsonl"  # where events go
    jsonl_path: str = "-"  # "-" = stdout
    also_nats: bool = False  # with kind webhook: every event is also published to nats.stream

    @property
    def destinations(self) -> tuple[Literal["webhook", "nats"], ...]:
        """The spooled destinations of this sink: webhook URLs, the NATS stream, both, or none (jsonl)."""
        if self.kind == "webhook":
            return ("webhook", "nats") if self.also_nats else ("webhook",)
        return ("nats",) if self.kind == "nats" else ()


class WebhookConfig(_Section):
    urls: tuple[str, ...] = ()  # receivers; each gets every event, with its own queue
    secret_env: str = "VBLAZE_BRIDGE_WEBHOOK_SECRET"  # environment variable holding the HMAC secret
    bearer_env: str | None = None  # environment variable holding a bearer token, if any
    timeout_seconds: float = Field(DEFAULT_WEBHOOK_TIMEOUT, gt=0)  # per attempt
    backoff_initial_seconds: float = Field(DEFAULT_WEBHOOK_BACKOFF_INITIAL, gt=0)
    backoff_max_seconds: float = Field(DEFAULT_WEBHOOK_BACKOFF_MAX, gt=0)
    basic_auth_env: str | None = None  # environment variable holding user:password for HTTP basic auth
    spool_path: str = "var/spool.sqlite3"
    spool_max_bytes: int = Field(DEFAULT_SPOOL_MAX_BYTES, ge=1024 * 1024)
    spool_warn_fraction: float = Field(
        DEFAULT_SPOOL_WARN_FRACTION, gt=0, le=1
    )  # warn when the spool is this full
    claim_interval_seconds: float = Field(
        DEFAULT_CLAIM_INTERVAL, gt=0
    )  # how often a worker adopts spooled events of dead workers

    @model_validator(mode="after")
    def _backoff(self) -> WebhookConfig:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("webhook.backoff_max_seconds must be >= webhook.backoff_initial_seconds")
        return self


NATS_TOKEN = r"^[A-Za-z0-9_-]{1,64}$"  # one subject token / a stream name: no '.', '*', '>', spaces


class NatsConfig(_Section):
    """JetStream publishing of events (bridge/nats/, docs/nats.md); the spool and the backoff are the
    webhook section's (one spool for every destination). Secrets only in files named here."""

    servers: tuple[str, ...] = ()  # nats://HOST:PORT (or tls://) of the cluster's servers
    stream: str = Field(DEFAULT_NATS_STREAM, pattern=NATS_TOKEN)  # created if missing
    subject_prefix: str = Field(
        DEFAULT_NATS_SUBJECT_PREFIX, pattern=NATS_TOKEN
    )  # subjects are PREFIX.<route>.<call id>.<type>; the stream takes PREFIX.>
    replicas: int = Field(DEFAULT_NATS_REPLICAS, ge=1, le=5)  # of a stream the bridge creates
    retention: Literal["limits", "interest", "workqueue"] = DEFAULT_NATS_RETENTION  # of a created stream
    max_age_seconds: float = Field(DEFAULT_NATS_MAX_AGE, ge=0)  # of a created stream; 0 = kept for ever
    duplicate_window_seconds: float = Field(
        DEFAULT_NATS_DUPLICATE_WINDOW, gt=0
    )  # of a created stream: a republished event_id within it is stored once
    connect_timeout_seconds: float = Field(DEFAULT_NATS_CONNECT_TIMEOUT, gt=0)  # per server tried
    publish_timeout_seconds: float = Field(DEFAULT_NATS_PUBLISH_TIMEOUT, gt=0)  # publish to JetStream ack
    reconnect_wait_seconds: float = Field(DEFAULT_NATS_RECONNECT_WAIT, gt=0)  # between reconnect rounds
    creds_file: str | None = None  # a .creds file (JWT and nkey seed)
    nkey_seed_file: str | None = None  # a file holding an nkey seed (SU...)
    user_password_file: str | None = None  # a file holding user:password
    tls_ca_file: str | None = None  # CA bundle to verify the servers (tls:// or a server requiring TLS)
    tls_cert_file: str | None = None  # client certificate, for servers that verify clients
    tls_key_file: str | None = None  # the client certificate's key

    @model_validator(mode="after")
    def _auth(self) -> NatsConfig:
        given = [k for k in ("creds_file", "nkey_seed_file", "user_password_file") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(
                f"nats: set at most one of creds_file, nkey_seed_file, user_password_file ({given})"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("nats.tls_cert_file and nats.tls_key_file go together")
        for url in self.servers:
            if not url.startswith(("nats://", "tls://")):
                raise ValueError(f"nats.servers: {url!r} must start with nats:// or tls://")
        return self


class StateConfig(_Section):
    directory: str = "var/state"  # where each worker records its calls in progress (see bridge/ledger.py)


class MetricsConfig(_Section):
    host: str = DEFAULT_METRICS_HOST
    port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535)  # 0 = disabled


class LoggingConfig(_Section):
    format: Literal["auto", "json", "text"] = "auto"  # auto = json under systemd, text on a terminal
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DrainConfig(_Section):
    timeout_seconds: float = Field(DEFAULT_DRAIN_SECONDS, ge=0)  # calls may finish this long after SIGTERM


class SiprecConfig(_Section):
    """SIPREC recording sessions (see `sip.siprec`): how streams map to caller and agent, how they go out."""

    accept_require: bool = True  # accept INVITEs with `Require: siprec` (pjsua answers them 420 otherwise)
    order: tuple[Literal["metadata", "label", "mline"], ...] = (
        DEFAULT_SIPREC_ORDER  # strategies tried in turn
    )
    agent_patterns: tuple[str, ...] = ()  # regexes on a participant's AOR or name that make it the agent
    caller_patterns: tuple[str, ...] = ()  # regexes on a participant's AOR or name that make it the caller
    agent_labels: tuple[str, ...] = ()  # a=label values of the agent's stream
    caller_labels: tuple[str, ...] = ()  # a=label values of the caller's stream
    mline_order: tuple[Literal["caller", "agent"], ...] = DEFAULT_SIPREC_MLINE_ORDER  # roles by m-line order
    number_forms: bool = (
        DEFAULT_SIPREC_NUMBER_FORMS  # metadata: an E.164 sender is the caller, a short one the agent
    )
    delivery: Literal["stereo", "streams"] = (
        DEFAULT_SIPREC_DELIVERY  # one 2-channel engine stream, or one each
    )

    @model_validator(mode="after")
    def _rules(self) -> SiprecConfig:
        self.rules()  # raises ValueError naming the key
        return self

    def rules(self) -> SiprecRules:
        """The role-mapping rules of `sip.siprec` (which validates them)."""
        return SiprecRules(
            order=self.order,
            agent_patterns=self.agent_patterns,
            caller_patterns=self.caller_patterns,
            agent_labels=self.agent_labels,
            caller_labels=self.caller_labels,
            mline_order=self.mline_order,
            number_forms=self.number_forms,
        )


# --- pause (PCI) and the control API -------------------------------------------------------------------


class PauseConfig(_Section):
    """Pausing a call for PCI (`bridge/pause.py`). Self-contained: a call's own config may replace it."""

    dtmf_pause: str = DEFAULT_DTMF_PAUSE  # RFC 4733 digits that pause the call; "" = off
    dtmf_resume: str = DEFAULT_DTMF_RESUME  # RFC 4733 digits that resume it; "" = off
    dtmf_hold_seconds: float = Field(
        DEFAULT_DTMF_HOLD_SECONDS, gt=0, le=30
    )  # a digit that may start a sequence is held back this long for the next one
    auto_resume_seconds: float = Field(DEFAULT_AUTO_RESUME_SECONDS, ge=0)  # resume by itself after; 0 = off
    reason_max_length: int = Field(
        DEFAULT_REASON_MAX_LENGTH, ge=1, le=MAX_REASON_LENGTH
    )  # characters of an API pause's reason

    @field_validator("dtmf_pause", "dtmf_resume")
    @classmethod
    def _sequence(cls, value: str) -> str:
        return check_sequence(value)

    @model_validator(mode="after")
    def _distinct(self) -> PauseConfig:
        a, b = self.dtmf_pause, self.dtmf_resume
        if a and b and (a.startswith(b) or b.startswith(a)):
            raise ValueError("pause.dtmf_pause and pause.dtmf_resume must differ and neither start the other")
        return self


class ControlToken(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")  # shown in events as by "api:<name>"
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # environment variable holding the token
    act: bool = True  # may pause, resume and hang up calls; false: may only watch (list, page, feed)


class ControlConfig(_Section):
    """The control API (`bridge/control/`), served by the supervisor."""

    host: str = DEFAULT_CONTROL_HOST  # address of the control API
    port: int = Field(DEFAULT_CONTROL_PORT, ge=0, le=65535)  # 0 = disabled
    tokens: tuple[ControlToken, ...] = ()  # bearer tokens, each named, its value in an environment variable
    timeout_seconds: float = Field(
        DEFAULT_CONTROL_TIMEOUT, gt=0, le=30
    )  # a worker's answer to the API; none in time = 503

    @field_validator("tokens")
    @classmethod
    def _unique(cls, value: tuple[ControlToken, ...]) -> tuple[ControlToken, ...]:
        names = [token.name for token in value]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        return value


# --- end of pause and control ----------------------------------------------------------------------------
# --- routes: per-line overrides (see `Config.for_route`) -------------------------------------------

# The sections a route may override, with the keys it may set in each (None: every key of the section).
# A mapping value (engine.tags) is merged over the top level's; any other value replaces it. Letting a
# route override one more section is one line here (the section must be a field of `Config`).
ROUTE_OVERRIDES: dict[str, tuple[str, ...] | None] = {
    "engine": ("url", "tags"),
    "siprec": (
        "order",
        "agent_patterns",
        "caller_patterns",
        "agent_labels",
        "caller_labels",
        "mline_order",
        "number_forms",
        "delivery",
    ),
    "sink": None,
    "webhook": ("urls", "secret_env", "bearer_env"),
    "nats": (
        "stream",
        "subject_prefix",
    ),  # a line's own stream (the connection and stream settings are shared)
    "sip": ("headers",),
    "pause": None,  # a line's own PCI pause digits and auto-resume
    "redaction": None,  # what the engine redacts on this line
    "recording": None,  # whether this line's calls are recorded (redacted), and where
}
ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # route names are metric label values: short


class KeyedError(ValueError):
    """A validator's error about a key below the model it validates (`key`, dotted, relative to that
    model's own key): `parse_config` names the whole dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regex: {exc}") from exc
    return value


class HeaderMatch(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9!%*_+`'~.-]+$")  # the SIP header, e.g. X-Queue
    regex: str  # searched in each of the header's values

    _check = field_validator("regex")(_regex)


class MatchConfig(_Section):
    """A route's conditions (see `sip.routing`); all given ones must hold. None given: catches all."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    to: str | None = None  # regex, fullmatch on the To user part (the DID)
    from_: str | None = Field(None, alias="from")  # regex, fullmatch on the From user part
    ruri: str | None = None  # regex, fullmatch on the Request-URI user part
    source: tuple[str, ...] = ()  # CIDR networks the INVITE's source is in (any)
    header: HeaderMatch | None = None  # a SIP header whose value matches
    participant: str | None = None  # regex, fullmatch on a SIPREC participant AOR (any)

    _regexes = field_validator("to", "from_", "ruri", "participant")(_regex)

    @field_validator("source")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return SipConfig._cidrs(value)

    @property
    def catch_all(self) -> bool:
        return self == MatchConfig()


class RouteConfig(_Section):
    """One route: a name, a match, and either a `reject` status or sections that override the top level
    (`ROUTE_OVERRIDES`, given as keys of the route next to `match`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    match: MatchConfig = MatchConfig()
    reject: int | None = None  # refuse the INVITE with this status (403, 404, 480, 486, 503, 603)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ROUTE_NAME.fullmatch(value) or value == NO_ROUTE:
            raise ValueError(f"{value!r}: lower-case letters, digits, _ and -, at most 32, not {NO_ROUTE!r}")
        return value

    @field_validator("reject")
    @classmethod
    def _reject(cls, value: int | None) -> int | None:
        if value is not None and value not in REJECT_STATUSES:
            raise ValueError(f"{value} is not one of {', '.join(map(str, REJECT_STATUSES))}")
        return value

    @model_validator(mode="after")
    def _overrides(self) -> RouteConfig:
        for section, keys in self.overrides.items():
            if section not in ROUTE_OVERRIDES:
                raise KeyedError(section, "unknown key")
            if not isinstance(keys, dict):
                raise KeyedError(section, "must be a mapping of keys")
            allowed = ROUTE_OVERRIDES[section]
            for key in keys:
                if allowed is not None and key not in allowed:
                    raise KeyedError(f"{section}.{key}", "unknown key (or not one a route may set)")
        if self.name == DEFAULT_ROUTE and not self.match.catch_all:
            raise KeyedError("match", "the default route catches every call; it takes no match")
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        """The sections this route sets, as given."""
        return dict(self.model_extra or {})

    @property
    def catch_all(self) -> bool:
        return self.name == DEFAULT_ROUTE or self.match.catch_all


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# --- end of routes ---------------------------------------------------------------------------------


class Config(_Section):
    sip: SipConfig = SipConfig()
    audio: AudioConfig = AudioConfig()
    engine: EngineConfig = EngineConfig()
    sink: SinkConfig = SinkConfig()
    webhook: WebhookConfig = WebhookConfig()
    nats: NatsConfig = NatsConfig()
    state: StateConfig = StateConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    drain: DrainConfig = DrainConfig()
    siprec: SiprecConfig = SiprecConfig()
    redaction: RedactionConfig = RedactionConfig()
    recording: RecordingConfig = RecordingConfig()
    pause: PauseConfig = PauseConfig()
    control: ControlConfig = ControlConfig()
    routes: tuple[RouteConfig, ...] = ()  # per-line routes, first match wins (see the example below)
    _routed: dict[str, Config] = PrivateAttr(default_factory=dict)  # route name -> effective config

    @model_validator(mode="after")
    def _cross(self) -> Config:
        check_recording(self.redaction, self.recording)
        if self.sink.kind == "webhook" and not self.webhook.urls:
            raise ValueError("sink.kind is 'webhook' but webhook.urls is empty")
        if "nats" in self.sink.destinations and not self.nats.servers:
            raise ValueError(
                "sink sends to NATS (sink.kind nats or sink.also_nats) but nats.servers is empty"
            )
        if self.sink.also_nats and self.sink.kind != "webhook":
            raise ValueError("sink.also_nats is for sink.kind webhook (sink.kind nats publishes already)")
        if self.audio.chunk_ms % self.audio.port_frame_ms and self.audio.port_frame_ms % self.audio.chunk_ms:
            raise ValueError("audio.chunk_ms and audio.port_frame_ms must divide one another")
        self._routed.update(self._effective_configs())
        return self

    # --- routes ---------------------------------------------------------------------------------------

    def for_route(self, name: str) -> Config:
        """The effective config of the calls on route `name`: this config with the route's sections
        applied (computed once, at load). The top-level settings for `default` without a route of
        that name, and for a name no route has."""
        return self._routed.get(name, self)

    def with_routes(self, routes: tuple[RouteConfig, ...]) -> Config:
        """This config with other routes (a reload: the other sections stay). Raises ConfigError."""
        raw = self.model_dump(mode="python", exclude={"routes"}, by_alias=True)
        raw["routes"] = [route.model_dump(mode="python", by_alias=True) for route in routes]
        return parse_config(raw, "<routes>")

    def _effective_configs(self) -> dict[str, Config]:
        """Each route's effective config, once the routes' order and their webhooks' signers hold."""
        self._check_order()
        if not self.routes:
            return {}
        base = self.model_dump(mode="python", exclude={"routes"}, by_alias=True)
        routed = {route.name: self._apply(index, route, base) for index, route in enumerate(self.routes)}
        self._check_signers(routed)
        self._check_streams(routed)
        return routed

    def _check_order(self) -> None:
        """Names are unique; a catch-all (no match, or `default`) is last."""
        seen: dict[str, int] = {}
        for index, route in enumerate(self.routes):
            if route.name in seen:
                raise KeyedError(
                    f"routes.{index}.name", f"duplicate route name {route.name!r} (routes.{seen[route.name]})"
                )
            seen[route.name] = index
            if route.catch_all and index < len(self.routes) - 1:
                raise KeyedError(
                    f"routes.{index + 1}",
                    f"never reached: routes.{index} ({route.name!r}) catches every call and must be last",
                )

    def _check_signers(self, routed: dict[str, Config]) -> None:
        """One webhook sink and spool serve every route: a URL is signed one way wherever it appears."""
        signers = {url: ("webhook", self.webhook) for url in self.webhook.urls if self.sink.kind == "webhook"}
        for index, route in enumerate(self.routes):
            effective = routed[route.name]
            hook = effective.webhook
            for url in hook.urls if effective.sink.kind == "webhook" else ():
                key, other = signers.setdefault(url, (f"routes.{index}.webhook", hook))
                if (other.secret_env, other.bearer_env) != (hook.secret_env, hook.bearer_env):
                    raise KeyedError(
                        f"routes.{index}.webhook.urls",
                        f"{url} is signed otherwise in {key} (one spool, one signer a URL)",
                    )

    def _check_streams(self, routed: dict[str, Config]) -> None:
        """Streams may not share subjects: one subject prefix a stream, one stream a prefix."""
        seen: dict[str, tuple[str, str]] = {}  # stream -> (prefix, key), and prefix -> (stream, key)
        pairs = [("nats", self.nats)] if "nats" in self.sink.destinations else []
        for index, route in enumerate(self.routes):
            effective = routed[route.name]
            if "nats" in effective.sink.destinations:
                pairs.append((f"routes.{index}.nats", effective.nats))
        for key, nats in pairs:
            for a, b in (
                (f"stream {nats.stream}", nats.subject_prefix),
                (f"prefix {nats.subject_prefix}", nats.stream),
            ):
                other, where = seen.setdefault(a, (b, key))
                if other != b:
                    raise KeyedError(
                        key, f"{a} is used with {other} in {where} (streams may not share subjects)"
                    )

    @staticmethod
    def _apply(index: int, route: RouteConfig, base: dict[str, Any]) -> Config:
        raw = dict(base)
        for section, keys in route.overrides.items():
            raw[section] = _merged(raw[section], keys)
        try:
            return Config.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            inner = err.get("ctx", {}).get("error")
            loc = ".".join(str(part) for part in err["loc"])
            msg = str(inner) if inner is not None else err["msg"]
            raise KeyedError(".".join(filter(None, (f"routes.{index}", loc))), msg) from None


def check_recording(redaction: RedactionConfig, recording: RecordingConfig) -> None:
    """The bridge never writes unredacted audio: a recording needs the engine's scrubbed audio."""
    if recording.enabled and not redaction.audio:
        raise ValueError(
            "recording.enabled is true but redaction.audio is false: the bridge records only the "
            "engine's scrubbed audio (set redaction.audio: true)"
        )


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document; raise ConfigError naming the file and the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            parts = [str(part) for part in err["loc"]]
            msg = err["msg"]
            inner = err.get("ctx", {}).get("error")
            if isinstance(inner, KeyedError):  # a key below the validated model (routes)
                parts.append(inner.key)
                msg = str(inner)
            key = ".".join(parts) or "(top level)"
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{source}: {key}: {msg}")
        raise ConfigError("\n".join(problems)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))
