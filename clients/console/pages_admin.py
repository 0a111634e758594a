"""An administrator's pages: applications to review (everything that will run), approve with narrowing or reject,
principals, grants with their use over time, revocation."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clients import types as t
from clients.console.app import Console, as_routes, form_value, form_values
from clients.console.charts import step_chart, usage_series
from clients.console.views import dec, local_input
from clients.errors import InvalidArgument, NotFound

__all__ = ["routes", "review_context"]

ROLES = ("admin", "applicant", "researcher", "auditor", "steward")


def _verification_narrowing(request: Request, v: t.VerificationSettings) -> dict[str, Any]:
    """The approve form's narrowing of a verification application: templates kept, the per-entity limit, and the
    settings switched off (an unticked box); only what differs from the application."""
    out: dict[str, Any] = {}
    kept = [x.name for x in v.templates if x.name in set(form_values(request, "templates"))]
    if not kept:
        raise _invalid("keep at least one check template")
    if len(kept) != len(v.templates):
        out["templates"] = kept
    limit = form_value(request, "per_entity_limit")
    if limit and limit != str(v.per_entity_limit):
        try:
            out["per_entity_limit"] = int(limit)
        except ValueError:
            raise _invalid("the per-entity limit is a whole number") from None
    for flag in ("reveal_unknown", "allow_sensitive", "private_mode"):
        if getattr(v, flag) and not form_value(request, flag):
            out[flag] = False
    return out


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, status="INVALID_ARGUMENT", code="INVALID_ARGUMENT")


def review_context(console: Console, s: t.Scenario) -> dict[str, Any]:
    """Everything a reviewer reads about one application: the columns with their levels, the model or plan."""
    sdk = console.sdk.base
    catalogue = {d.name: d for d in sdk.catalogue()}
    selections = []
    for sel in s.datasets:
        d = catalogue.get(sel.name)
        by_name = {c.name: c for c in d.columns} if d else {}
        granted = s.grant.terms.datasets if s.grant else ()
        in_grant = next((g.columns for g in granted if g.name == sel.name), None)
        selections.append({"selection": sel, "dataset": d,
                           "current": d is not None and (not sel.version or d.version == sel.version),
                           "columns": [(name, by_name.get(name)) for name in sel.columns],
                           "granted": in_grant})
    model = sdk.model(s.model_hash) if s.kind == "HE_SCORING" and s.model_hash else None
    plan = sdk.training_plan(s.model_hash) if s.kind == "FL_TRAINING" and s.model_hash else None
    return {"s": s, "selections": selections, "model": model, "plan": plan}


def routes(console: Console) -> list[Route]:
    admin = console.sdk.admin

    def people() -> dict[str, t.Principal]:
        return {p.id: p for p in admin.principals()}

    def pending(request: Request) -> Response:
        console.require("admin")
        scenarios = admin.pending()
        return console.render(request, "admin_pending.html", title="Pending applications", scenarios=scenarios,
                              people=people() if scenarios else {})

    def review(request: Request) -> Response:
        console.require("admin")
        s = admin.scenario(request.path_params["scenario_id"])
        return console.render(request, "admin_review.html", title=f"Review {s.title}",
                              applicant=people().get(s.applicant_id), **review_context(console, s))

    def approve(request: Request) -> Response:
        console.require("admin")
        s = admin.scenario(request.path_params["scenario_id"])
        narrowing: dict[str, Any] = {}
        for name in ("epsilon", "delta", "max_epsilon_per_call"):
            value = form_value(request, name)
            if value and value != dec(getattr(s, name)):
                narrowing[name] = value
        quota = form_value(request, "quota")
        if quota and quota != str(s.quota):
            try:
                narrowing["quota"] = int(quota)
            except ValueError:
                raise _invalid("the quota is a whole number") from None
        until = form_value(request, "valid_until")
        if until and until != local_input(s.valid_until):
            try:
                narrowing["valid_until"] = dt.datetime.fromisoformat(until).replace(tzinfo=dt.timezone.utc)
            except ValueError:
                raise _invalid("the end of validity is a date and time (UTC)") from None
        columns: dict[str, list[str]] = {}
        for sel in s.datasets:
            chosen = set(form_values(request, f"columns.{sel.name}"))
            if not chosen & set(sel.columns):
                raise _invalid(f"choose at least one column of {sel.name}")
            if chosen != set(sel.columns):
                columns[sel.name] = [c for c in sel.columns if c in chosen]  # only what was asked for
        if columns:
            narrowing["columns"] = columns
        if s.verification is not None:
            narrowing.update(_verification_narrowing(request, s.verification))
        approved = admin.approve(s.id, **narrowing)
        if approved.grant is None:
            return console.done(request, f"{approved.id} is {approved.status}", f"/admin/review/{s.id}")
        g = approved.grant
        awaiting = f"; awaiting the stewards of {', '.join(g.awaiting)}" if g.awaiting else ""
        return console.done(request, f"approved {s.title}: grant {g.id}, epsilon {dec(g.terms.epsilon)}, "
                                     f"quota {g.terms.quota}{awaiting}", f"/admin/grants/{g.id}")

    def reject(request: Request) -> Response:
        console.require("admin")
        sid = request.path_params["scenario_id"]
        reason = form_value(request, "reason")
        if not reason:
            raise _invalid("give the applicant a reason")
        s = admin.reject(sid, reason)
        return console.done(request, f"rejected {s.title}: {reason}", "/admin/pending")

    def principals(request: Request) -> Response:
        console.require("admin")
        listed = sorted(admin.principals(), key=lambda p: (p.status != "pending", p.name.lower()))
        return console.render(request, "admin_principals.html", title="Principals", people=listed, roles=ROLES)

    def enrol(request: Request) -> Response:
        console.require("admin")
        try:
            key = bytes.fromhex(form_value(request, "public_key"))
        except ValueError:
            raise _invalid("the public key is hex") from None
        if len(key) != 32:
            raise _invalid(f"an Ed25519 public key has 32 bytes, not {len(key)}")
        roles = [r for r in form_values(request, "roles") if r in ROLES]
        p = admin.enrol(name=form_value(request, "name"), organisation=form_value(request, "organisation"),
                        roles=roles, public_key=key)
        return console.done(request, f"enrolled {p.name} ({p.id}) as {', '.join(p.roles)}", "/admin/principals")

    def approve_principal(request: Request) -> Response:
        console.require("admin")
        p = admin.approve_principal(request.path_params["principal_id"])
        return console.done(request, f"{p.name} is {p.status}", "/admin/principals")

    def suspend(request: Request) -> Response:
        console.require("admin")
        p = admin.suspend_principal(request.path_params["principal_id"], form_value(request, "reason"))
        return console.done(request, f"{p.name} is {p.status}", "/admin/principals")

    def grants(request: Request) -> Response:
        console.require("admin")
        granted = [s for s in admin.scenarios() if s.grant is not None]
        return console.render(request, "admin_grants.html", title="Grants", scenarios=granted, people=people())

    def grant(request: Request) -> Response:
        console.require("admin")
        gid = request.path_params["grant_id"]
        s = next((s for s in admin.scenarios() if s.grant is not None and s.grant.id == gid), None)
        if s is None or s.grant is None:
            raise NotFound("no such grant", status="NOT_FOUND", code="NOT_FOUND")
        entries = list(admin.audit_entries(grant_id=gid))
        series = usage_series(entries, kind=s.kind)
        terms = s.grant.terms
        now = dt.datetime.now(dt.timezone.utc)
        end = min(max(now, terms.issued_at + dt.timedelta(minutes=1)), terms.not_after)
        start = terms.issued_at
        charts = [
            step_chart("epsilon spent", [(p.time, float(p.epsilon)) for p in series], float(terms.epsilon),
                       start=start, end=end),
            step_chart("quota used", [(p.time, float(p.quota)) for p in series], float(terms.quota),
                       start=start, end=end),
        ]
        return console.render(request, "admin_grant.html", title=f"Grant {gid}", s=s, g=s.grant,
                              charts=charts, series=series, people=people(), charged=len(series),
                              spent=series[-1].epsilon if series else Decimal(0))

    def revoke(request: Request) -> Response:
        console.require("admin")
        gid = request.path_params["grant_id"]
        reason = form_value(request, "reason")
        if not reason:
            raise _invalid("give the grantee a reason")
        s = admin.revoke(gid, reason)
        return console.done(request, f"revoked grant {gid} ({s.title}): {reason}", f"/admin/grants/{gid}")

    def stewardship(request: Request) -> Response:
        console.require("admin")
        dataset = request.path_params["dataset"]
        held = admin.set_stewardship(dataset, owner=form_value(request, "owner"),
                                     stewards=form_values(request, "stewards"), policy=form_value(request, "policy"))
        return console.done(request, f"{dataset} is held by {held.owner}; co-signature: {held.policy}", "/catalogue")

    return as_routes([
        ("/admin/stewardship/{dataset}", stewardship, ["POST"]),
        ("/admin/pending", pending, ["GET"]),
        ("/admin/review/{scenario_id}", review, ["GET"]),
        ("/admin/review/{scenario_id}/approve", approve, ["POST"]),
        ("/admin/review/{scenario_id}/reject", reject, ["POST"]),
        ("/admin/principals", principals, ["GET"]),
        ("/admin/principals/enrol", enrol, ["POST"]),
        ("/admin/principals/{principal_id}/approve", approve_principal, ["POST"]),
        ("/admin/principals/{principal_id}/suspend", suspend, ["POST"]),
        ("/admin/grants", grants, ["GET"]),
        ("/admin/grants/{grant_id}", grant, ["GET"]),
        ("/admin/grants/{grant_id}/revoke", revoke, ["POST"]),
    ])
