"""The OpenAPI document describes exactly the API the control server routes."""

from __future__ import annotations

from typing import Any

import yaml

from bridge.control import server


async def no_worker(*request: Any) -> list[Any]:
    raise AssertionError("not called")


def test_every_api_route_is_in_the_document_and_every_documented_one_is_routed() -> None:
    app = server.ControlServer({}, no_worker).app()
    routed = {
        (resource.canonical, route.method.lower())
        for resource in app.router.resources()
        for route in resource
        if resource.canonical.startswith("/v1/") and route.method != "HEAD"
    }
    document = yaml.safe_load(server.OPENAPI.read_text(encoding="utf-8"))
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert routed == documented
