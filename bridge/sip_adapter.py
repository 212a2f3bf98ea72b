"""What `sip.endpoint` is given by the bridge: its settings from the config, and the readiness rule.

sip/ imports nothing of bridge/; the worker builds the endpoint with `sip_settings(config)`,
`worker_readiness` and a `bridge.metrics.CallMetrics` (a `sip.settings.CallObserver`).
"""

from __future__ import annotations

from bridge.config import Config, RouteConfig
from bridge.readiness import Readiness, decide
from sip.routing import DEFAULT_ROUTE, Match, Route, RouteTable
from sip.settings import ReadyVerdict, SipSettings, WorkerLoad


def sip_settings(config: Config) -> SipSettings:
    """The SIP endpoint's settings, each from the config key of the same name."""
    sip = config.sip
    return SipSettings(
        host=sip.host,
        transports=sip.transports,
        codecs=sip.codecs,
        calls_per_worker=sip.calls_per_worker,
        calls_per_source=sip.calls_per_source,
        retry_after_seconds=sip.retry_after_seconds,
        allow_from=sip.allow_from,
        invite_rate_per_source=sip.invite_rate_per_source,
        invite_burst_per_source=sip.invite_burst_per_source,
        headers=sip.headers,
        ack_timeout_seconds=sip.ack_timeout_seconds,
        first_rtp_timeout_seconds=sip.first_rtp_timeout_seconds,
        rtp_timeout_seconds=sip.rtp_timeout_seconds,
        transaction_timeout_seconds=sip.transaction_timeout_seconds,
        sample_rate=config.audio.sample_rate,
        port_frame_ms=config.audio.port_frame_ms,
        siprec_rules=config.siprec.rules(),
        accept_require_siprec=config.siprec.accept_require,
        refuse_without_engine=config.engine.on_unreachable == "reject",
        routes=route_table(config),
    )


def route_table(config: Config) -> RouteTable:
    """The `routes:` list as the SIP layer's matcher (`sip.routing`); each route with the SIP-side parts
    of its effective config (`Config.for_route`): the headers copied into call.started, SIPREC rules."""
    return RouteTable(
        routes=tuple(_route(config, route) for route in config.routes),
        fallback=Route(DEFAULT_ROUTE, headers=config.sip.headers, siprec_rules=config.siprec.rules()),
    )


def _route(config: Config, route: RouteConfig) -> Route:
    effective = config.for_route(route.name)
    match = route.match
    return Route(
        name=route.name,
        match=Match(
            to=match.to,
            from_=match.from_,
            ruri=match.ruri,
            source=match.source,
            header=(match.header.name, match.header.regex) if match.header is not None else None,
            participant=match.participant,
        ),
        reject=route.reject,
        headers=effective.sip.headers,
        siprec_rules=effective.siprec.rules(),
    )


def worker_readiness(load: WorkerLoad) -> ReadyVerdict:
    """One worker's answer to SIP OPTIONS, by the rule `/readyz` uses for the pool (a pool of one)."""
    decision = decide(
        Readiness(
            draining=load.draining,
            workers_alive=1,
            workers_total=1,
            calls_active=load.calls_held,
            capacity=load.capacity,
            engine_reachable=load.engine_reachable,
            engine_full=load.engine_full,
        )
    )
    return ReadyVerdict(decision.ready, decision.reason)
