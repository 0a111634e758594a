"""The administrators' commands of ``sandbox-client``: principals, imports, review and signing, the audit log."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from clients.cli import (
    app, check_roles, clean, connect, day, dec, fail, model_text, out, parse_selections, public_key_given, row,
    scenario_details, selection_text, table,
)
from clients import types as t
from clients.cli_steward import plan_text
from clients.cli_json import AsJson, jsonable, print_json
from clients.client import AdminClient, AuditorClient
from clients.errors import SandboxClientError
from clients.witness import WitnessError
from clients.witness import witness as run_witness

__all__: list[str] = []


@app.command()
def enrol(
    ctx: typer.Context,
    name: str = typer.Option(...),
    organisation: str = typer.Option(...),
    role: list[str] = typer.Option(..., help="admin, applicant, researcher or auditor (repeatable)."),
    public_key: Optional[str] = typer.Option(None, help="The principal's public key as hex."),
    public_key_file: Optional[Path] = typer.Option(None, help="A .pub file written by keygen."),
    as_json: AsJson = False,
) -> None:
    """Enrol a principal by public key; it is active at once."""
    raw, roles = public_key_given(public_key, public_key_file), check_roles(role)
    with connect(ctx, AdminClient) as admin:
        p = admin.enrol(name=name, organisation=organisation, roles=roles, public_key=raw)
    if as_json:
        print_json(p)
        return
    out().print(Text(clean(f"enrolled {p.id}  {p.name} ({p.organisation})  roles {', '.join(p.roles)}  "
                           f"status {p.status}"), style="green"))


@app.command()
def principals(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Every enrolled or registered principal."""
    with connect(ctx, AdminClient) as admin:
        people = admin.principals()
    if as_json:
        print_json(people)
        return
    tbl = table("id", "name", "organisation", "roles", "status", "since")
    for p in people:
        row(tbl, p.id, p.name, p.organisation, ", ".join(p.roles), p.status, day(p.created_at))
    out().print(tbl)


@app.command("approve-principal")
def approve_principal(
    ctx: typer.Context, principal_id: str = typer.Argument(...),
    role: list[str] = typer.Option([], help="Roles to grant instead of those asked for (repeatable)."),
    as_json: AsJson = False,
) -> None:
    """Activate a self-registered principal."""
    with connect(ctx, AdminClient) as admin:
        p = admin.approve_principal(principal_id, check_roles(role))
    if as_json:
        print_json(p)
        return
    out().print(Text(clean(f"{p.id} is {p.status}  roles {', '.join(p.roles)}"), style="green"))


@app.command()
def suspend(
    ctx: typer.Context, principal_id: str = typer.Argument(..., help="The principal to suspend."),
    reason: str = typer.Option("", help="Why, sent with the signed request (the audit log keeps its hash)."),
    as_json: AsJson = False,
) -> None:
    """Suspend a principal: every later call it signs is refused (whoami still answers, with its status)."""
    with connect(ctx, AdminClient) as admin:
        p = admin.suspend_principal(principal_id, reason)
    if as_json:
        print_json(p)
        return
    out().print(Text(clean(f"{p.id}  {p.name} ({p.organisation}) is {p.status}" + (f": {reason}" if reason else "")),
                     style="yellow"))


@app.command("import")
def import_(
    ctx: typer.Context,
    schema: Path = typer.Argument(..., exists=True, dir_okay=False, help="Schema and classification (TOML)."),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="The rows: CSV, plain or gzip."),
    max_rejected: int = typer.Option(0, min=0, help="Rows that may be rejected before the import fails."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; write nothing."),
    as_json: AsJson = False,
) -> None:
    """Import a dataset (all or nothing) under its schema file."""
    with connect(ctx, AdminClient) as admin:
        try:
            r = admin.import_dataset(schema, data, max_rejected=max_rejected, dry_run=dry_run)
        except ValueError as exc:
            raise fail(f"bad schema file {schema}: {exc}") from None
    if as_json:
        print_json({**jsonable(r), "dry_run": dry_run})
        return
    con = out()
    verb = "would import" if dry_run else "imported"
    con.print(Text(clean(f"{verb} {r.dataset.name} version {r.dataset.version[:12]}: {r.rows_imported:,} rows, "
                         f"{r.duplicates_dropped:,} duplicates dropped, {r.rejected_count:,} rejected"),
                   style="green"))
    if r.rejected:
        tbl = table("line", "column", "reason", title="rejected rows" + (
            f" (first {len(r.rejected)} of {r.rejected_count})" if r.rejected_count > len(r.rejected) else ""))
        for x in r.rejected:
            row(tbl, x.line, x.column, x.reason)
        con.print(tbl)


@app.command()
def pending(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Applications waiting for review, in full."""
    with connect(ctx, AdminClient) as admin:
        scenarios = admin.pending()
        people = {p.id: p for p in admin.principals()} if scenarios else {}
        catalogue = {d.name: d for d in admin.catalogue()} if scenarios else {}
        models = {s.model_hash: admin.model(s.model_hash) for s in scenarios if s.kind == "HE_SCORING"}
        plans = {s.model_hash: admin.training_plan(s.model_hash) for s in scenarios if s.kind == "FL_TRAINING"}
    if as_json:  # each application with its applicant, its datasets' stewardship and its model or plan in full
        print_json([{**jsonable(s), "applicant": jsonable(people.get(s.applicant_id)),
                     "model": jsonable(models.get(s.model_hash)), "plan": jsonable(plans.get(s.model_hash)),
                     "stewardship": {d.name: jsonable(catalogue[d.name].stewardship) for d in s.datasets
                                     if d.name in catalogue}} for s in scenarios])
        return
    con = out()
    if not scenarios:
        con.print("No applications are pending.")
    for s in scenarios:
        p = people.get(s.applicant_id)
        tbl = table("field", "value", title=f"{s.id}  applied {day(s.created_at)}")
        row(tbl, "applicant", f"{p.name} ({p.organisation}) {p.id}" if p else s.applicant_id)
        scenario_details(s, tbl)
        row(tbl, "column levels", _levels(s, catalogue))
        held = [f"{d.name}: {catalogue[d.name].stewardship.owner} ({catalogue[d.name].stewardship.policy})"  # type: ignore[union-attr]
                for d in s.datasets if d.name in catalogue and catalogue[d.name].stewardship is not None]
        if held:
            row(tbl, "held by (co-signing)", "\n".join(held))
        if s.model_hash in models:
            row(tbl, "model (in full)", model_text(models[s.model_hash]))
        if s.model_hash in plans:
            row(tbl, "training plan (in full)", plan_text(plans[s.model_hash]))
        con.print(tbl)


def _levels(s: t.Scenario, catalogue: dict[str, t.Dataset]) -> str:
    lines = []
    for d in s.datasets:
        levels = {c.name: c.level for c in catalogue[d.name].columns} if d.name in catalogue else {}
        lines.append(f"{d.name}: " + ", ".join(f"{c} ({levels.get(c, '?')})" for c in d.columns))
    return "\n".join(lines)


@app.command()
def approve(
    ctx: typer.Context,
    scenario_id: str = typer.Argument(...),
    columns: list[str] = typer.Option([], help="Narrow a dataset's columns: NAME=c1,c2 (repeatable)."),
    epsilon: Optional[str] = typer.Option(None, help="Narrow the epsilon budget."),
    delta: Optional[str] = typer.Option(None, help="Narrow the delta budget."),
    max_epsilon_per_call: Optional[str] = typer.Option(None, help="Narrow epsilon per computation."),
    quota: Optional[int] = typer.Option(None, min=0, help="Narrow the number of computations."),
    days: Optional[int] = typer.Option(None, min=1, help="Valid for this many days from now."),
    template: list[str] = typer.Option([], "--template", help="VERIFICATION: grant only these check templates, by "
                                                              "name (repeatable; of those applied for)."),
    per_entity_limit: Optional[int] = typer.Option(None, min=1, help="VERIFICATION: lower the checks of one entity "
                                                                     "per grant."),
    as_json: AsJson = False,
) -> None:
    """Approve an application as applied for or narrowed, signing the grant terms with your own key."""
    narrowing: dict[str, Any] = {"epsilon": epsilon, "delta": delta, "max_epsilon_per_call": max_epsilon_per_call,
                                 "quota": quota}
    narrowing = {k: v for k, v in narrowing.items() if v is not None}
    if columns:
        narrowing["columns"] = parse_selections(columns, "--columns")
    if template:
        narrowing["templates"] = template
    if per_entity_limit is not None:
        narrowing["per_entity_limit"] = per_entity_limit
    if days is not None:
        narrowing["valid_until"] = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)
    with connect(ctx, AdminClient) as admin:
        s = admin.approve(scenario_id, **narrowing)
    if as_json:
        print_json(s)
        return
    con = out()
    con.print(Text(clean(f"{s.id} {s.status}"), style="green"))
    if s.grant is not None:
        g = s.grant.terms
        con.print(Text(clean(f"grant {s.grant.id}: {g.kind}, epsilon {dec(g.epsilon)}, delta {dec(g.delta)}, "
                             f"quota {g.quota}, until {day(g.not_after)}; {selection_text(g.datasets)}")))
        if g.verification is not None:
            v = g.verification
            con.print(Text(clean(f"checks: {', '.join(f'{x.name} ({x.expression})' for x in v.templates)}; at most "
                                 f"{v.per_entity_limit} check(s) of one entity")))


@app.command()
def reject(ctx: typer.Context, scenario_id: str = typer.Argument(...),
           reason: str = typer.Option(..., help="Told to the applicant."), as_json: AsJson = False) -> None:
    """Reject a pending application."""
    with connect(ctx, AdminClient) as admin:
        s = admin.reject(scenario_id, reason)
    if as_json:
        print_json(s)
        return
    out().print(Text(clean(f"{s.id} {s.status}: {s.decision_reason or reason}"), style="yellow"))


@app.command()
def revoke(ctx: typer.Context, grant_id: str = typer.Argument(...),
           reason: str = typer.Option(..., help="Recorded and told to the grantee."), as_json: AsJson = False) -> None:
    """Revoke a grant; every later computation under it is refused."""
    with connect(ctx, AdminClient) as admin:
        s = admin.revoke(grant_id, reason)
    if as_json:
        print_json(s)
        return
    out().print(Text(clean(f"grant {grant_id} revoked; scenario {s.id} is {s.status}"), style="yellow"))


def _method(full: str) -> str:
    return full.rsplit("/", 1)[-1]


audit_app = typer.Typer(help="The tamper-evident audit log: every call, allowed or refused, with the privacy "
                             "budget it spent; and its witness.", invoke_without_command=True)
app.add_typer(audit_app, name="audit")


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    after: int = typer.Option(0, min=0, help="Show entries after this sequence number."),
    limit: int = typer.Option(100, min=1, help="Show at most this many entries."),
    head: bool = typer.Option(False, "--head", help="Show the log's latest signed tree head instead."),
    principal: str = typer.Option("", help="Only this principal: its id, or a part of its name."),
    grant: str = typer.Option("", help="Only entries under this grant id."),
    method: str = typer.Option("", help="Only this method, e.g. RunQuery."),
    status: str = typer.Option("", help="Only this status, e.g. OK or PERMISSION_DENIED."),
    since: Optional[dt.datetime] = typer.Option(None, help="Only entries at or after this UTC time."),
    until: Optional[dt.datetime] = typer.Option(None, help="Only entries before this UTC time."),
    requests: bool = typer.Option(False, "--requests", help="Also show what each entry's call asked."),
    as_json: AsJson = False,
) -> None:
    """The tamper-evident audit log: every call, allowed or refused, with the privacy budget it spent."""
    if ctx.invoked_subcommand is not None:
        return
    con = out()
    with connect(ctx, AuditorClient) as admin:
        if head:
            h = admin.audit_head()
            if as_json:
                print_json(h)
                return
            tbl = table("field", "value", title="audit log head")
            row(tbl, "entries", h.entries)
            if h.head is None:
                row(tbl, "signed tree head", "none: the log is empty")
            else:
                row(tbl, "tree head size", h.head.size)
                row(tbl, "root hash", h.head.root_hash)
                row(tbl, "signed at", day(dt.datetime.fromtimestamp(h.head.signed_at_ms / 1000, dt.timezone.utc)))
                row(tbl, "signature", h.head.signature.hex())
                row(tbl, "cosigned by", ", ".join(h.cosigned_by) or "no witness yet")
            row(tbl, "audit public key", h.audit_public_key.hex())
            con.print(tbl)
            return
        # One entry more than shown tells whether there is more to page through.
        utc = dict(since=since.replace(tzinfo=since.tzinfo or dt.timezone.utc) if since else None,
                   until=until.replace(tzinfo=until.tzinfo or dt.timezone.utc) if until else None)
        entries = list(itertools.islice(admin.audit_entries(
            after_seq=after, page_size=min(limit + 1, 1000), principal=principal, grant_id=grant, method=method,
            status=status, **utc), limit + 1))
    more_after = entries[limit - 1].seq if len(entries) > limit else None
    if as_json:  # more_after: the --after that shows the next page (null: nothing follows)
        print_json({"entries": entries[:limit], "more_after": more_after})
        return
    headers = ["seq", "time", "principal", "method", "grant", "status", "error", "epsilon"]
    tbl = table(*headers, *(["asked"] if requests else []))
    for e in entries[:limit]:
        who = f"{e.principal_name} ({e.principal_id})" if e.principal_name else e.principal_id or "-"
        row(tbl, e.seq, e.time.strftime("%Y-%m-%d %H:%M:%S"), who, _method(e.method), e.grant_id, e.status,
            e.error_code or "", dec(e.epsilon) if e.epsilon else "", *([e.request] if requests else []))
    con.print(tbl)
    if more_after is not None:
        con.print(f"more entries follow: --after {more_after}")


@audit_app.command("witness")
def witness(
    ctx: typer.Context,
    state: Path = typer.Option(..., help="This witness's directory: the pinned key and the last head it checked."),
    public_key: Optional[str] = typer.Option(None, help="The sandbox's published audit public key (hex); needed "
                                                        "on the first run, then pinned."),
    public_key_file: Optional[Path] = typer.Option(None, help="The same, from a file (audit_signing.pub)."),
    as_json: AsJson = False,
) -> None:
    """Check that the log's latest signed head extends the last one this witness saw, then countersign it.

    Run it on the auditor's own machine, periodically. Exit codes: 0 the log extends what this witness saw
    (cosigned); 1 it does not (truncated, rewritten or re-signed: the stored head is kept); 2 usage; 3 the
    server did not answer.
    """
    given = public_key_given(public_key, public_key_file) if (public_key or public_key_file) else None
    con = out()
    try:
        with connect(ctx, AuditorClient) as auditor:
            result = run_witness(auditor, state, given)
    except WitnessError as exc:
        raise fail(f"WITNESS FAILED: {exc}") from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--public-key") from None
    except SandboxClientError as exc:
        if exc.code == "AUDIT_DAMAGED":  # the server found an entry its audit key did not sign
            raise fail(f"WITNESS FAILED: {exc.message}") from None
        fail(f"the sandbox did not give a head to check: {exc}")
        raise typer.Exit(3) from None
    if as_json:
        print_json({"head": result.head, "previous": result.previous, "grew_by": result.grew_by,
                    "state": state / "head.json" if result.head else None})
        return
    if result.head is None:
        con.print("the audit log is empty: nothing to witness yet")
        return
    first = "first head this witness stores" if result.previous is None else f"extends the head of {result.previous.size}"
    con.print(Text(clean(f"witnessed tree head of {result.head.size} entries ({first}; {result.grew_by} new), root "
                         f"{result.head.root_hash[:16]}…; cosigned and stored in {state / 'head.json'}"),
                   style="green"))
