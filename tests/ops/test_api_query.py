"""Query parameters a route does not read are refused (gate/ops/api.py ``_query_checked``)."""

from __future__ import annotations

import pytest

from tests.ops.conftest import AUTH, Served

AUDIT_PARAMS = "number, since, until, tenant, campaign, verdict, format, limit"


def get_paths(served: Served) -> list[str]:
    """Every GET route the server serves, its path parameters filled in."""
    paths = {
        route.resource.canonical
        for route in served.server.app.router.routes()
        if route.method == "GET" and route.resource is not None
    }
    return sorted(
        path.replace("{list}", "red").replace("{id}", "0" * 32).replace("{event}", "refusal")
        for path in paths
    )


async def status_and_error(served: Served, path: str) -> tuple[int, str | None]:
    """GET ``path`` (with the token): its status, and its error if it is one. The body of a
    success is not read (``/v1/audit/follow`` never ends)."""
    async with served.session.get(served.url + path, headers=AUTH) as response:
        if response.status < 400:
            return response.status, None
        return response.status, (await response.json(content_type=None))["error"]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v1/rules?tenent=acme", "tenent: unknown query parameter; this route takes none"),
        ("/v1/live?tenent=acme", "tenent: unknown query parameter; this route takes none"),
        ("/v1/audit/follow?tenant=acme", "tenant: unknown query parameter; this route takes none"),
        ("/v1/session?x=1", "x: unknown query parameter; this route takes none"),
        ("/v1/lists?tenent=acme", "tenent: unknown query parameter; use tenant, campaign"),
        ("/v1/lists/red?campain=c1", "campain: unknown query parameter; use tenant, campaign"),
        ("/v1/audit?colour=red", f"colour: unknown query parameter; use {AUDIT_PARAMS}"),
        ("/v1/audit?tenant=a&a%0Ab=1", f"'a\\nb': unknown query parameter; use {AUDIT_PARAMS}"),
        (
            f"/v1/scrub/file/{'0' * 32}?format=csv",
            "format: unknown query parameter; this route takes none",
        ),
        # A POST route without query parameters: ?tenant= is not its body's tenant.
        ("/v1/reload?tenant=acme", "tenant: unknown query parameter; this route takes none"),
    ],
)
async def test_an_unknown_query_parameter_is_400_naming_it_and_the_accepted_ones(
    served: Served, path: str, error: str
) -> None:
    """A typo in a filter (``?tenent=acme``) is a 400 naming the parameter and the ones
    the route reads, never an unfiltered 200 that passes for a filtered one."""
    method = "POST" if path.startswith("/v1/reload") else "GET"
    headers = {**AUTH, "Content-Type": "application/json"}
    async with served.session.request(
        method, served.url + path, headers=headers, data=b"{}"
    ) as response:
        answer = response.status, (await response.json(content_type=None))
    assert (400, {"error": error}) == answer


async def test_every_get_route_refuses_an_unknown_query_parameter(served: Served) -> None:
    """Each /v1/ GET route the server serves (the console's included) refuses ?tenent=…:
    a route added later cannot forget to."""
    paths = [path for path in get_paths(served) if path.startswith("/v1/")]
    answers = {path: await status_and_error(served, path + "?tenent=acme") for path in paths}
    assert len(paths) >= 8
    assert {path: 400 for path in paths} == {path: answer[0] for path, answer in answers.items()}


async def test_an_unknown_parameter_without_the_token_is_still_401(served: Served) -> None:
    """The guard comes first: a caller without the token learns nothing of the routes."""
    assert 401 == (await served.get("/v1/rules?tenent=acme", auth=False))[0]


async def test_known_parameters_still_filter(served: Served) -> None:
    """?tenant=… on the lists page, ?format=csv on the search: 200."""
    assert 200 == (await status_and_error(served, "/v1/lists?tenant=default"))[0]
    assert 200 == (await status_and_error(served, "/v1/audit?format=csv&limit=5"))[0]
