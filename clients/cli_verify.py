"""``sandbox-client verify`` and ``verify-certificate``: verification (核验) checks and their certificates.

``verify`` sends an applicant's claims about entities through one template its grant pins and writes one
result per claim; ``verify-certificate`` lets anyone holding a certificate check it against the sandbox's
published audit key (offline), and with ``--online`` that the audit log holds the check it names.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from clients import types as t
from clients import verify as vf
from clients.cli import app, clean, connect, day, error_text, fail, out, public_key_given, warn
from clients.cli_json import AsJson, jsonable, print_json
from clients.client import ApplicantClient, SandboxClient
from clients.errors import SandboxClientError
from wire import checks
from wire.verification import RESULTS

__all__ = ["ClaimRow", "claim_columns", "read_claims", "template_meaning", "verification_text"]

ENTITY, CONSENT = "entity_id", "consent_ref"


@dataclasses.dataclass(frozen=True)
class ClaimRow:
    line: int  # the claims file's line, for messages
    entity_id: str
    claim: tuple[str, ...]
    consent_ref: str


def claim_columns(n: int) -> list[str]:
    """The claims file's columns for a template's ``n`` claimed values: none, ``claim``, or ``claim1``..``claimN``."""
    return [] if n == 0 else ["claim"] if n == 1 else [f"claim{i}" for i in range(1, n + 1)]


def read_claims(path: Path, template: t.CheckTemplate) -> list[ClaimRow]:
    """The claims file: a header of exactly ``entity_id``, ``consent_ref`` and the template's claim columns (in
    any order), then one row per check. Values are sent as written (ids and consent references trimmed)."""
    wanted = [ENTITY, CONSENT, *claim_columns(len(checks.parse(template.expression).parameters))]
    hint = f"template '{template.name}' ({template.expression}) needs the header {','.join(wanted)}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--claims") from None
    if sorted(header) != sorted(wanted):
        extra, missing = sorted(set(header) - set(wanted)), sorted(set(wanted) - set(header))
        said = "; ".join(x for x in (f"unexpected {', '.join(extra)}" if extra else "",
                                     f"missing {', '.join(missing)}" if missing else "",
                                     "a column twice" if len(header) != len(set(header)) else "") if x)
        raise typer.BadParameter(f"{path}: {hint} ({said})", param_hint="--claims")
    at = {name: header.index(name) for name in wanted}
    claims = []
    for line, r in rows:
        if len(r) != len(header):
            raise typer.BadParameter(f"{path} line {line}: {len(r)} fields, the header has {len(header)}",
                                     param_hint="--claims")
        entity, consent = r[at[ENTITY]].strip(), r[at[CONSENT]].strip()
        if not entity:
            raise typer.BadParameter(f"{path} line {line}: no entity_id", param_hint="--claims")
        if not consent:
            raise typer.BadParameter(f"{path} line {line}: no consent_ref (every check of a person needs the "
                                     "reference of the person's consent)", param_hint="--claims")
        claims.append(ClaimRow(line, entity, tuple(r[at[c]] for c in wanted[2:]), consent))
    if not claims:
        raise typer.BadParameter(f"{path} holds no claims", param_hint="--claims")
    return claims


def verification_text(v: t.VerificationSettings) -> Text:
    """A VERIFICATION application's (or grant's) templates and limits in full, for a reviewer: what will run."""
    lines = [f"entities by {v.id_column}; at most {v.per_entity_limit} check(s) of one entity per grant, "
             "whatever the template"]
    for x in v.templates:
        lines.append(f"  {x.name}: {x.expression}  ({template_meaning(x.expression)})")
    lines.append("unknown ids: " + ("told apart (UNKNOWN_ENTITY)" if v.reveal_unknown else
                                    "answered NO_MATCH, like a false claim"))
    lines.append("sensitive columns: " + ("allowed" if v.allow_sensitive else "not allowed"))
    lines.append("private mode: " + ("allowed (equality templates; the sandbox sees blinded points only, cannot "
                                     "enforce the per-entity limit, issues no certificates; quota at most 20,000)"
                                     if v.private_mode else "no"))
    return Text("\n".join(clean(line) for line in lines))


def template_meaning(expression: str) -> str:
    """What a check template answers, in words: how many claimed values it takes and what each is compared to."""
    try:
        atoms = checks.parse(expression).atoms
    except checks.TemplateError:
        return "not a valid template"
    said = []
    for a in atoms:
        if a.kind == "claim":
            said.append(f"{a.column} equals the claimed value")
        elif a.kind == "tolerance":
            said.append(f"{a.column} within {a.value:g}{'%' if a.percent else ''} of the claimed value")
        else:
            said.append(f"fixed: {a.column} {a.op} {a.value if isinstance(a.value, str) else format(a.value, 'g')}")
    return "; ".join(said)


def granted_template(client: ApplicantClient, grant_id: str, name: str) -> t.CheckTemplate:
    """The template as this applicant's grant pins it (its signed terms), or a one-line refusal."""
    for s in client.scenarios():
        g = s.grant
        if g is None or g.id != grant_id:
            continue
        settings = g.terms.verification
        if settings is None:
            raise fail(f"grant {grant_id} is a {g.terms.kind} grant, not a VERIFICATION grant")
        chosen = settings.template(name)
        if chosen is None:
            raise fail(f"refused: template {name!r} is not in grant {grant_id}; it allows "
                       + ", ".join(f"{x.name} ({x.expression})" for x in settings.templates))
        return chosen
    raise fail(f"refused: no grant of yours has the id {grant_id} (sandbox-client status lists yours)")


def writable_file(path: Path, option: str, *, not_same_as: Path) -> None:
    """Refuse, before anything is sent, an output the command could not write (or the input itself)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir() or not parent.is_dir():
        raise typer.BadParameter(f"cannot write {path}: no such directory, or it is a directory", param_hint=option)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise typer.BadParameter(f"cannot write {path}: permission denied", param_hint=option)
    if path.exists() and path.resolve() == not_same_as.resolve():
        raise typer.BadParameter(f"{path} is the claims file: write the results elsewhere", param_hint=option)


def writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot create {path}: {exc.strerror}", param_hint="--certificates") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"cannot write in {path}: permission denied", param_hint="--certificates")


def certificate_name(cert: t.Certificate, row: int, width: int) -> str:
    """``cert-<audit entry>-<row>.json``: unique per check (the entry is one call's), and no id in the name."""
    return f"cert-{cert.audit_seq}-{row:0{width}d}.json"


@app.command()
def verify(
    ctx: typer.Context,
    grant: str = typer.Option(..., "--grant", help="The VERIFICATION grant."),
    template: str = typer.Option(..., "--template", help="The name of one of the grant's check templates."),
    claims: Path = typer.Option(..., "--claims", exists=True, dir_okay=False,
                                help="CSV: entity_id, consent_ref and the claim column(s); see above."),
    output: Path = typer.Option(Path("results.csv"), "--out", "-o",
                                help="CSV to write: entity_id,result[,certificate]."),
    certificates: Optional[Path] = typer.Option(
        None, "--certificates", file_okay=False,
        help="Also ask for a signed certificate per check and write each here (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Private mode (equality templates of a grant that allows "
                                                          "it): ids and claims never leave this machine."),
    as_json: AsJson = False,
) -> None:
    r"""Check claims about entities through one of your grant's templates: one exact yes or no per claim.

    The claims file is a CSV with a header; one row per check, in any column order:

      entity_id    the entity's id in the grant's id column (e.g. ID of credit_default)
      consent_ref  the reference of that person's consent to the check (required for every row; e.g.
                   AUTH-2026-000123): the audit entry's batch digest and the certificate cover it
      claim        the claimed value, for a template with one ?  (AGE == ?)
      claim1, claim2, ...  for a template with several ?, in the order of the ? in the template
                   (none for a template without ?, such as AGE >= 25)

    Any other column is refused (so a file made for another template is not sent by mistake). Values are
    sent as written: give the same id, claim and consent reference to verify-certificate later.

    The results file has one row per claim, in the claims file's order: entity_id, result (MATCH, NO_MATCH,
    or UNKNOWN_ENTITY where the grant reveals unknown ids) and, with --certificates, the certificate's file
    name. The claims are not written back. Certificate files are named cert-<audit entry>-<row>.json (row:
    the claim's position in the results), so that runs never collide and no id appears in a file name or a
    directory listing; the results file says which is whose.

    --private (equality templates only, if the grant allows it) sends blinded points instead of ids and
    claims; it issues no certificates.
    """
    if private and certificates is not None:
        raise typer.BadParameter("private mode issues no certificates: the sandbox never learns a result",
                                 param_hint="--certificates")
    writable_file(output, "--out", not_same_as=claims)
    if certificates is not None:
        writable_dir(certificates)
    stopped: SandboxClientError | None = None
    with connect(ctx, ApplicantClient) as client:
        chosen = granted_template(client, grant, template)
        rows = read_claims(claims, chosen)
        batch = [(r.entity_id, list(r.claim), r.consent_ref) for r in rows]
        try:
            last = client.verify(grant, template, batch, certificates=certificates is not None, private=private)
        except SandboxClientError as exc:  # a later batch refused: the earlier ones were charged, keep their answers
            if exc.partial is None:
                raise
            stopped, last = exc, exc.partial
    results, issued = list(last.results), list(last.certificates)
    names = write_results(output, rows, results, issued, certificates)
    counts = {r: results.count(r) for r in RESULTS}
    if as_json:  # what was done; the results themselves are in the file
        print_json({"grant": grant, "template": chosen.name, "expression": chosen.expression,
                    "checked": len(results), "of": len(rows), "results": counts, "quota_used": last.quota_used,
                    "quota_cap": last.quota_cap, "private": private, "out": output, "certificates_dir": certificates,
                    "certificates": names, "receipts": [r.seq for r in last.receipts],
                    "stopped": None if stopped is None else str(stopped)})
    else:
        con = out()
        summary = (f"checked {len(results)} claim(s) through '{chosen.name}' ({chosen.expression}): "
                   f"{counts['MATCH']} MATCH, {counts['NO_MATCH']} NO_MATCH"
                   + (f", {counts['UNKNOWN_ENTITY']} UNKNOWN_ENTITY" if counts["UNKNOWN_ENTITY"] else ""))
        con.print(Text(clean(summary), style="green" if stopped is None else "yellow"))
        con.print(Text(clean(f"quota used {last.quota_used} / {last.quota_cap}; results in {output}"
                             + (f"; {len(names)} certificate(s) in {certificates}" if certificates else "")
                             + ("; private mode: the sandbox saw blinded points only" if private else ""))))
    if stopped is not None:
        raise fail(f"{error_text(stopped, ctx.find_root().obj)}; the first {len(results)} of {len(rows)} results "
                   "were written")


def write_results(output: Path, rows: list[ClaimRow], results: list[str], issued: list[t.Certificate],
                  directory: Path | None) -> list[str]:
    """The results file (and each certificate's file); returns the certificate files' names."""
    width = len(str(len(rows)))
    names = [certificate_name(c, i + 1, width) for i, c in enumerate(issued)]
    try:
        with output.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow([ENTITY, "result", *(["certificate"] if directory is not None else [])])
            for i, (r, result) in enumerate(zip(rows, results)):
                w.writerow([r.entity_id, result, *([names[i] if i < len(names) else ""] if directory else [])])
        if directory is not None:
            for name, cert in zip(names, issued):
                with (directory / name).open("x", encoding="utf-8") as fh:  # never over another certificate
                    fh.write(cert.to_file())
    except OSError as exc:
        raise fail(f"the checks were made but could not all be written: {exc}") from None
    return names


@app.command("verify-certificate")
def verify_certificate(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A certificate file (verify --certificates)."),
    public_key: Optional[str] = typer.Option(None, help="The sandbox's published audit public key (hex)."),
    public_key_file: Optional[Path] = typer.Option(None, help="The same, from a file (the sandbox's "
                                                              "keys/audit_signing.pub)."),
    entity_id: Optional[str] = typer.Option(None, help="Check the certificate is about this entity id."),
    claim: list[str] = typer.Option([], help="Check it is about this claimed value (repeat for each ?, in order)."),
    consent_ref: Optional[str] = typer.Option(None, help="Check it names this consent reference."),
    online: bool = typer.Option(False, "--online", help="Also ask the sandbox for the audit entry the certificate "
                                                        "names, with a proof that it is in the signed log "
                                                        "(needs --server, --key and --ca)."),
    as_json: AsJson = False,
) -> None:
    """Check a verification certificate: the sandbox's signature, offline, against its published audit key.

    A certificate names its grant, template, result and audit entry, and salted digests of the entity id,
    the claim and the consent reference: give them (--entity-id, --claim, --consent-ref, exactly as they were
    sent) to check that it is about that person and claim; without them only the signature is checked.
    The key the file itself states is never trusted. --online also checks that the audit entry it names is
    the check it records, signed and included in a tree head the same key signed.

    Exit codes: 0 valid; 1 not valid (the reason on one line); 2 usage; 3 --online and the sandbox did not
    answer.
    """
    key = public_key_given(public_key, public_key_file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}", param_hint="FILE") from None
    given: dict[str, Any] = dict(entity_id=entity_id, claim=claim or None, consent_ref=consent_ref)
    try:
        if online:
            try:
                with connect(ctx, SandboxClient) as client:
                    checked = client.check_certificate(text, audit_public_key=key, **given)
            except SandboxClientError as exc:
                if exc.code != "CERTIFICATE_INVALID":
                    fail(f"the sandbox did not check the certificate online: {exc}")
                    raise typer.Exit(3) from None
                checked = t.CertificateCheck((f"the sandbox did not sign it ({exc.message})",), {})
        else:
            checked = vf.certificate_check(text, key, **given)
    except SandboxClientError as exc:  # not a certificate file at all
        checked = t.CertificateCheck((exc.message,), {})
    if as_json:
        print_json({**jsonable(checked), "valid": checked.valid, "online": online,
                    "checked_against": sorted(k for k, v in given.items() if v is not None)})
        if not checked.valid:
            raise typer.Exit(1)
        return
    if not checked.valid:
        raise fail(f"NOT VALID: {'; '.join(checked.problems)}")
    print_valid(checked, given, online)


def print_valid(checked: t.CertificateCheck, given: dict[str, Any], online: bool) -> None:
    doc = checked.document
    issued = dt.datetime.fromtimestamp(int(doc["issued_at_ms"]) / 1000, dt.timezone.utc)
    con = out()
    con.print(Text(clean(f"VALID: {doc['result']} for template '{doc['template']}' ({doc['expression']}) under grant "
                         f"{doc['grant_id']} on {doc['dataset']} (version {str(doc['dataset_version'])[:12]}), "
                         f"issued {day(issued)}, audit entry {doc['audit_seq']}"), style="green"))
    named = [label for label, k in (("entity", "entity_id"), ("claim", "claim"), ("consent reference", "consent_ref"))
             if given[k] is not None]
    con.print("signature checked against the published audit key"
              + (f"; it is about the {', '.join(named)} given" if named else ""))
    if online and checked.entry is not None and checked.head is not None:
        con.print(Text(clean(f"online: audit entry {checked.entry.seq} records this check's batch and "
                             f"is included in the signed tree head of {checked.head.size} entries "
                             "(inclusion proof checked)")))
    if not named:
        warn("not checked against an entity, claim or consent reference: give --entity-id, --claim and "
             "--consent-ref to check whom and what it is about")

