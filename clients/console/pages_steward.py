"""A data steward's pages: the applications touching the steward's datasets, read in full, and co-signing an
approved grant's terms with the steward's own key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clients.console.app import Console, as_routes
from clients.console.pages_admin import review_context
from clients.errors import NotFound

__all__ = ["routes"]


def routes(console: Console) -> list[Route]:
    def overview(request: Request) -> Response:
        console.require("steward")
        return console.render(request, "steward.html", title="Stewardship", scenarios=console.sdk.steward.steward_scenarios())

    def scenario(request: Request) -> Response:
        console.require("steward")
        sid = request.path_params["scenario_id"]
        s = next((s for s in console.sdk.steward.steward_scenarios() if s.id == sid), None)
        if s is None:
            raise NotFound("no such scenario among your datasets' applications", status="NOT_FOUND", code="NOT_FOUND")
        return console.render(request, "steward_scenario.html", title=f"Review {s.title}", **review_context(console, s))

    def cosign(request: Request) -> Response:
        console.require("steward")
        gid = request.path_params["grant_id"]
        s = console.sdk.steward.cosign(gid)
        return console.done(request, f"co-signed grant {gid} ({s.title})", f"/steward/scenario/{s.id}")

    return as_routes([
        ("/steward", overview, ["GET"]),
        ("/steward/scenario/{scenario_id}", scenario, ["GET"]),
        ("/steward/grants/{grant_id}/cosign", cosign, ["POST"]),
    ])
