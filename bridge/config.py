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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.errors import ConfigError
from sip import siprec
from sip.limits import PJSUA_MAX_CALLS
from sip.siprec import SiprecRules

# Where workers write their metric files; prometheus_client reads it when it is first imported.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_SIP_HOST = "127.0.0.1"
DEFAULT_SIP_FIRST_PORT = 5080
DEFAULT_WORKERS = 2
DEFAULT_CALLS_PER_WORKER = PJSUA_MAX_CALLS  # as many as pjsua2-python's wheel can hold
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
DEFAULT_REDACTION_TEXT = False
DEFAULT_REDACTION_AUDIO = False
DEFAULT_SCRUB_REPL = "#"  # V-Blaze's default replacement of a scrubconf rule
MAX_SCRUB_RULES = 32
MAX_SCRUB_RULE_CHARS = 512
DEFAULT_RECORDING_ENABLED = False
DEFAULT_RECORDING_DIRECTORY = "var/recordings"
DEFAULT_RECORDING_FORMAT: Literal["wav"] = "wav"

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
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
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
    kind: Literal["jsonl", "webhook"] = "jsonl"  # where events go
    jsonl_path: str = "-"  # "-" = stdout


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


class Config(_Section):
    sip: SipConfig = SipConfig()
    audio: AudioConfig = AudioConfig()
    engine: EngineConfig = EngineConfig()
    sink: SinkConfig = SinkConfig()
    webhook: WebhookConfig = WebhookConfig()
    state: StateConfig = StateConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    drain: DrainConfig = DrainConfig()
    siprec: SiprecConfig = SiprecConfig()
    redaction: RedactionConfig = RedactionConfig()
    recording: RecordingConfig = RecordingConfig()

    @model_validator(mode="after")
    def _cross(self) -> Config:
        check_recording(self.redaction, self.recording)
        if self.sink.kind == "webhook" and not self.webhook.urls:
            raise ValueError("sink.kind is 'webhook' but webhook.urls is empty")
        if self.audio.chunk_ms % self.audio.port_frame_ms and self.audio.port_frame_ms % self.audio.chunk_ms:
            raise ValueError("audio.chunk_ms and audio.port_frame_ms must divide one another")
        return self


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
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            msg = err["msg"]
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
