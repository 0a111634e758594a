"""An applicant's or researcher's pages: their scenarios (read-only), what each grant leaves of its budget and
quota and whether it verifies, and training jobs: a researcher's own round by round with the named model, or
every job with its owner for an administrator or auditor (the server decides which: ``training_jobs``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clients import types as t
from clients.console.app import Console, as_routes
from clients.errors import FailedPrecondition, PermissionDenied

__all__ = ["routes"]


def verification(console: Console, grant: t.Grant | None) -> tuple[bool, str]:
    """Whether the grant's signatures verify here (offline, against the administrators' keys)."""
    if grant is None:
        return False, ""
    try:
        console.sdk.base.verify_grant(grant)
    except PermissionDenied as exc:
        return False, exc.message
    return True, "verified against the administrators' keys"


def routes(console: Console) -> list[Route]:
    sdk = console.sdk

    def scenarios(request: Request) -> Response:
        console.require("applicant", "researcher")
        return console.render(request, "own_scenarios.html", title="My scenarios", scenarios=sdk.base.scenarios())

    def scenario(request: Request) -> Response:
        console.require("applicant", "researcher")
        s = sdk.base.scenario(request.path_params["scenario_id"])
        verified, note = verification(console, s.grant)
        return console.render(request, "own_scenario.html", title=s.title, s=s, verified=verified, note=note)

    def training(request: Request) -> Response:
        console.require("researcher", "admin", "auditor")
        jobs = sdk.base.training_jobs()
        return console.render(request, "own_training.html", title="Training jobs", jobs=jobs,
                              everyone=any(j.owner_id != sdk.principal_id for j in jobs))

    def job(request: Request) -> Response:
        console.require("researcher", "admin", "auditor")
        job_id = request.path_params["job_id"]
        found = next((j for j in sdk.base.training_jobs(limit=1000) if j.job_id == job_id), None)
        result, note = None, ""
        if found is not None and found.state == "completed" and found.owner_id == sdk.principal_id:
            try:
                result = sdk.researcher.training_result(job_id)
            except (FailedPrecondition, PermissionDenied) as exc:
                note = exc.message
        return console.render(request, "own_job.html", title=f"Training job {job_id}", job_id=job_id, job=found,
                              result=result, note=note)

    return as_routes([
        ("/scenarios", scenarios, ["GET"]),
        ("/scenarios/{scenario_id}", scenario, ["GET"]),
        ("/training", training, ["GET"]),
        ("/training/{job_id}", job, ["GET"]),
    ])
