"""Verification (核验): exact yes/no answers to claims about one entity, through the templates a grant pins.

A DP answer is noisy, so its budget limits what it reveals. A verification answer is exact, so what is limited is
the question: which templates (pinned by the grant, reviewed by the administrator and, where a dataset asks, its
steward), how often (a quota of checks), about whom (a consent reference per check of a person, on the record) and
how often about one entity (``per_entity_limit`` checks per grant, counted under keyed pseudonyms, whatever the
template), which stops a binary search for a value through repeated claims.

An unknown id answers NO_MATCH unless the grant lets it be told apart (``reveal_unknown``), and it is counted
against the per-entity limit like any other, so neither the answer nor the limit says whether a person is in the
dataset. Templates whose every condition holds for every value the schema allows would answer only that
membership question, and are refused.

Private mode (``wire.verification``): for equality templates the applicant's ids and claims never reach the
sandbox. The sandbox publishes, under a per-grant, per-template key derived from its secret, the encodings of
every stored (id, values) the template can match, padded with dummies to a multiple of ``PRIVATE_PAD`` and
sorted; it raises the applicant's blinded points to the same key and learns only how many there were. The
per-entity limit cannot be enforced there (the sandbox cannot tell two points apart), so a private grant's quota
is capped at ``PRIVATE_MAX_QUOTA``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sandbox import audit, catalogue, policy
from sandbox.calls import Call, Deferred
from sandbox.compute_io import (
    Certificate, PrivateBatch, PrivateOutcome, VerifyBatch, VerifyItem, VerifyOutcome,
)
from sandbox.columns import ArrayCache
from sandbox.domain import (
    Budget, CheckTemplate, ColumnSchema, ColumnType, DatasetInfo, DatasetSelection, Kind, Level, Principal,
    VerificationSettings,
)
from sandbox.errors import ErrorCode, SandboxError
from sandbox.he_entities import EntityCounts, EntityIndex
from sandbox.state import Tx
from wire import checks
from wire import verification as wv

DEFAULT_PER_ENTITY = 3
MAX_PER_ENTITY = 20
MAX_TEMPLATES = 16
MAX_BATCH = 10_000
#: The most checks a grant with private mode may allow: there the per-entity limit cannot be enforced.
PRIVATE_MAX_QUOTA = 20_000
#: A private set is padded with dummy points to a multiple of this, so its size does not give the row count.
PRIVATE_PAD = 4096
MAX_ID = 64
MAX_CLAIM = 256
_CONSENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


def _bad(detail: str) -> SandboxError:
    return SandboxError(ErrorCode.INVALID_ARGUMENT, detail)


# -- review: what an application and a grant may say ----------------------------------------------------------------

def _column(info: DatasetInfo, name: str) -> ColumnSchema:
    col = info.schema.column(name)
    if col is None:
        raise _bad(f"unknown column '{name[:64]}' in '{info.schema.name}'")
    return col


def _always_true(atom: checks.Atom, col: ColumnSchema) -> bool:
    """A fixed condition that every value the schema allows satisfies (so it selects no one)."""
    if isinstance(atom.value, str):
        others = [c for c in col.categories if c != atom.value]
        return atom.op == "!=" and atom.value not in col.categories or atom.op == "==" and not others
    if col.lower is None or col.upper is None:
        return False
    x, lo, hi = float(atom.value), col.lower, col.upper  # type: ignore[arg-type]
    return {"<": hi < x, "<=": hi <= x, ">": lo > x, ">=": lo >= x, "==": lo == hi == x,
            "!=": x < lo or x > hi}[atom.op]


def check_template(info: DatasetInfo, columns: Sequence[str], template: CheckTemplate,
                   settings: VerificationSettings) -> CheckTemplate:
    """One template, parsed and checked against the dataset and the selection; returned in canonical form."""
    if not checks.NAME_RE.match(template.name):
        raise _bad(f"template name {template.name[:40]!r} must match {checks.NAME_RE.pattern}")
    try:
        parsed = checks.parse(template.expression)
    except checks.TemplateError as exc:
        raise _bad(f"template '{template.name}': {exc}") from None
    for atom in parsed.atoms:
        col = _column(info, atom.column)
        policy.check_column_use(Kind.VERIFICATION, col)
        if col.level is Level.IDENTIFIER:
            raise _bad(f"template '{template.name}': the identifier '{col.name}' is the lookup key, not a condition")
        if col.level is Level.SENSITIVE and not settings.allow_sensitive:
            raise SandboxError(ErrorCode.COLUMN_NOT_NAMED, f"template '{template.name}' reads the sensitive column "
                                                           f"'{col.name}': the application must allow sensitive columns")
        if col.name not in columns:
            raise _bad(f"template '{template.name}' reads '{col.name}', which the application does not name")
        if atom.kind == "tolerance" and not col.numeric:
            raise _bad(f"template '{template.name}': a tolerance needs a numeric column ('{col.name}' is "
                       f"{col.type.value})")
        if atom.kind == "fixed":
            if isinstance(atom.value, str) != (col.type in (ColumnType.CATEGORICAL, ColumnType.STRING)):
                raise _bad(f"template '{template.name}': compare '{col.name}' with a "
                           f"{'quoted category' if not col.numeric else 'number'}")
            if col.type is ColumnType.CATEGORICAL and atom.value not in col.categories:
                raise _bad(f"template '{template.name}': {atom.value!r} is not a category of '{col.name}'")
    if not parsed.parameters and all(_always_true(a, _column(info, a.column)) for a in parsed.atoms):
        raise _bad(f"template '{template.name}' holds for every value the schema allows: it would only say whether "
                   "an entity is in the dataset")
    return CheckTemplate(template.name, parsed.canonical())


def check_settings(info: DatasetInfo, selection: DatasetSelection, settings: VerificationSettings | None,
                   quota: int) -> VerificationSettings:
    """An application's verification settings, checked and made canonical (INVALID_ARGUMENT with the reason)."""
    if settings is None:
        raise _bad("a VERIFICATION application states its check templates (verification settings)")
    ids = [c.name for c in info.schema.columns if c.level is Level.IDENTIFIER]
    if settings.id_column not in ids:
        raise _bad(f"id_column must be an identifier column of '{info.schema.name}' ({', '.join(ids) or 'none'})")
    if settings.id_column not in selection.columns:
        raise _bad(f"the application must name the identifier column '{settings.id_column}'")
    if not 1 <= len(settings.templates) <= MAX_TEMPLATES:
        raise _bad(f"name 1 to {MAX_TEMPLATES} check templates")
    if len({t.name for t in settings.templates}) != len(settings.templates):
        raise _bad("each template name may be used once")
    limit = settings.per_entity_limit or DEFAULT_PER_ENTITY
    if not 1 <= limit <= MAX_PER_ENTITY:
        raise _bad(f"per_entity_limit is 1 to {MAX_PER_ENTITY} checks of one entity per grant")
    templates = tuple(check_template(info, selection.columns, t, settings) for t in settings.templates)
    if settings.private_mode:
        if not any(checks.parse(t.expression).equality_only for t in templates):
            raise _bad("private mode checks equality templates (COL == ?) only, and no template is one")
        if quota > PRIVATE_MAX_QUOTA:
            raise _bad(f"with private mode the per-entity limit cannot be enforced, so the quota is at most "
                       f"{PRIVATE_MAX_QUOTA} checks")
    return VerificationSettings(settings.id_column, templates, limit, settings.reveal_unknown,
                                settings.allow_sensitive, settings.private_mode)


def narrows(applied: VerificationSettings | None, granted: VerificationSettings | None, quota: int,
            columns: Sequence[str] = ()) -> str:
    """Why granted settings do not narrow those applied for ("" when they do); ``columns`` are the granted
    selection's, which must still hold the identifier and every granted template's columns."""
    if applied is None or granted is None:
        return "" if applied is granted else "verification settings differ from the application"
    asked = {t.name: t.expression for t in applied.templates}
    if granted.id_column != applied.id_column:
        return "the identifier column differs from the application"
    if not granted.templates or any(asked.get(t.name) != t.expression for t in granted.templates):
        return "templates must be a non-empty subset of those applied for, unchanged"
    if len({t.name for t in granted.templates}) != len(granted.templates):
        return "each template may be granted once"
    if not 1 <= granted.per_entity_limit <= applied.per_entity_limit:
        return "the per-entity limit must be between 1 and the one applied for"
    for flag in ("reveal_unknown", "allow_sensitive", "private_mode"):
        if getattr(granted, flag) and not getattr(applied, flag):
            return f"{flag} was not applied for"
    if granted.private_mode and quota > PRIVATE_MAX_QUOTA:
        return f"with private mode the quota is at most {PRIVATE_MAX_QUOTA}"
    needed = {granted.id_column, *(c for t in granted.templates for c in checks.parse(t.expression).columns)}
    if not needed <= set(columns):
        return f"the granted columns must keep what the templates read: {', '.join(sorted(needed - set(columns)))}"
    return ""


# -- checks ---------------------------------------------------------------------------------------------------------

def _granted(call: Call, grant_id: str, template: str, *, private: bool = False
             ) -> tuple[policy.Authorised, VerificationSettings, CheckTemplate, checks.Template]:
    """The one authorisation of a check: the grant, its settings and the template asked for."""
    call.annotate(grant_id=grant_id)
    grant = policy.grant_if_grantee(call.tx, call.principal, grant_id)
    settings = grant.terms.verification if grant is not None else None
    chosen = settings.template(template) if settings is not None else None
    dataset = grant.terms.datasets[0].name if grant is not None and grant.terms.datasets else ""
    parsed = checks.parse(chosen.expression) if chosen is not None else None

    def columns(_: DatasetInfo | None) -> tuple[str, ...]:
        if settings is None or parsed is None:
            return ()
        return (settings.id_column, *parsed.columns)

    auth = policy.authorise(call, grant_id, Kind.VERIFICATION, dataset, columns)
    if settings is None:  # pragma: no cover - a VERIFICATION grant always carries its settings
        raise SandboxError(ErrorCode.INTERNAL, log_detail=f"grant {grant_id} has no verification settings")
    if chosen is None or parsed is None:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, f"template {template[:40]!r} is not in the grant (it allows "
                                                    f"{', '.join(t.name for t in settings.templates)})")
    if private and not settings.private_mode:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, "the grant does not allow private mode")
    if private and not parsed.equality_only:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, f"template '{template}' is not an equality template: private "
                                                    "mode cannot check it")
    return auth, settings, chosen, parsed


def lookup_id(col: ColumnSchema, entity_id: str) -> str:
    """An entity id as the index holds it, or INVALID_ARGUMENT if it cannot be one of this column's ids."""
    if col.type is ColumnType.INTEGER:
        try:
            return wv.canonical_id(col.type.value, entity_id)
        except ValueError:
            raise _bad(f"entity ids of '{col.name}' are whole numbers of 1 to 18 digits") from None
    if not 1 <= len(entity_id) <= MAX_ID or not entity_id.isprintable():
        raise _bad(f"entity ids are 1 to {MAX_ID} printable characters")
    return entity_id


def _claim_values(col: ColumnSchema, atom: checks.Atom, values: list[str], template: str) -> np.ndarray:
    """The batch's claimed values for one parameter, checked against the column's type, categories and bounds."""
    if col.type is ColumnType.CATEGORICAL:
        index = {c: i for i, c in enumerate(col.categories)}
        codes = [index.get(v, -1) for v in values]
        if min(codes, default=0) < 0:
            bad = next(v for v, c in zip(values, codes) if c < 0)
            raise _bad(f"template '{template}': {bad[:32]!r} is not a category of '{col.name}'")
        return np.asarray(codes, dtype=np.int64)
    if col.type is ColumnType.STRING:
        if max(map(len, values), default=0) > MAX_CLAIM:
            raise _bad(f"template '{template}': a claimed value is at most {MAX_CLAIM} characters")
        return np.asarray(values, dtype=object)
    try:
        numbers = np.asarray([float(wv.canonical_claim(col.type.value, v)) for v in values], dtype=np.float64)
    except ValueError as exc:
        raise _bad(f"template '{template}': a claimed {col.name} must be {'an integer' if col.type is ColumnType.INTEGER else 'a number'} ({exc})") from None
    lo = -np.inf if col.lower is None else col.lower
    hi = np.inf if col.upper is None else col.upper
    outside = (numbers < lo) | (numbers > hi)
    if outside.any():
        raise _bad(f"template '{template}': a claimed {col.name} lies outside its declared bounds "
                   f"[{'-inf' if col.lower is None else f'{col.lower:g}'}, "
                   f"{'inf' if col.upper is None else f'{col.upper:g}'}]")
    return numbers


def _compare(stored: np.ndarray, op: str, value: Any) -> np.ndarray:
    return {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
            ">=": np.greater_equal}[op](stored, value)


def _present(col: ColumnSchema, stored: np.ndarray) -> np.ndarray:
    if col.type is ColumnType.CATEGORICAL:
        return stored >= 0
    if stored.dtype.kind == "f":
        return ~np.isnan(stored)
    return np.ones(len(stored), dtype=bool)


def _fixed_value(col: ColumnSchema, atom: checks.Atom) -> object:
    if col.type is ColumnType.CATEGORICAL:
        return col.categories.index(str(atom.value))
    return atom.value


def evaluate(info: DatasetInfo, cache: ArrayCache, parsed: checks.Template, rows: np.ndarray,
             claims: list[np.ndarray]) -> np.ndarray:
    """Whether each row satisfies the template with its item's claimed values (missing values satisfy nothing)."""
    data = cache.columns(info, list(parsed.columns))
    ok = np.ones(len(rows), dtype=bool)
    params = iter(claims)
    for atom in parsed.atoms:
        col = _column(info, atom.column)
        stored = data[atom.column][rows]
        ok &= _present(col, stored)
        if atom.kind == "fixed":
            ok &= _compare(stored, atom.op, _fixed_value(col, atom))
        elif atom.kind == "claim":
            ok &= np.asarray(stored == next(params), dtype=bool)
        else:
            claimed = next(params)
            diff = np.abs(stored.astype(np.float64) - claimed)
            room = float(atom.value) / 100.0 * np.abs(stored.astype(np.float64)) if atom.percent else float(atom.value)  # type: ignore[arg-type]
            ok &= diff <= room
    return ok


def _check_consents(info: DatasetInfo, refs: Sequence[str]) -> None:
    """Every dataset here describes people: each check needs the person's consent reference."""
    if any(not r for r in refs):
        missing = sum(1 for r in refs if not r)
        raise SandboxError(ErrorCode.CONSENT_REQUIRED, f"{missing} of the {len(refs)} items of '{info.schema.name}' "
                                                       "have no consent reference")
    if not all(_CONSENT.match(r) for r in refs):
        raise _bad("a consent reference is 1 to 64 letters, digits and . _ : / - (starting with a letter or digit)")


@dataclass(frozen=True)
class Prepared:
    """A batch's items read against one grant's template and dataset version: what ``verify`` would compute first."""

    grant_id: str
    expression: str
    version: str
    ids: list[str]
    claims: list[np.ndarray]


def _read_items(info: DatasetInfo, settings: VerificationSettings, chosen: CheckTemplate, parsed: checks.Template,
                req: VerifyBatch) -> tuple[list[str], list[np.ndarray]]:
    """The batch's ids as the index holds them and its claims typed per parameter; every item checked (size, id
    format, claims' types and bounds, consent references): INVALID_ARGUMENT or CONSENT_REQUIRED otherwise."""
    n = len(req.items)
    if not 1 <= n <= MAX_BATCH:
        raise _bad(f"send 1 to {MAX_BATCH} items per batch")
    id_col = _column(info, settings.id_column)
    ids = [lookup_id(id_col, it.entity_id) for it in req.items]
    params = parsed.parameters
    if any(len(it.claim) != len(params) for it in req.items):
        raise _bad(f"template '{chosen.name}' ({chosen.expression}) takes {len(params)} claimed value(s) per item")
    claims = [_claim_values(_column(info, atom.column), atom, [it.claim[j] for it in req.items], chosen.name)
              for j, atom in enumerate(params)]
    _check_consents(info, [it.consent_ref for it in req.items])
    return ids, claims


def _warm_grant(tx: Tx, caller: Principal, grant_id: str, template: str
                ) -> tuple[str, VerificationSettings, CheckTemplate, checks.Template, DatasetInfo] | None:
    """For a warm-up before the write lock: the grant's id, settings, template (parsed) and dataset version, if the
    caller holds a live grant with that template; None otherwise (the handler then checks everything and says what).
    """
    grant = policy.grant_if_grantee(tx, caller, grant_id)
    settings = grant.terms.verification if grant is not None else None
    chosen = settings.template(template) if settings is not None else None
    if grant is None or settings is None or chosen is None or grant.revoked:
        return None
    sel = grant.terms.datasets[0]
    return grant.id, settings, chosen, checks.parse(chosen.expression), catalogue.get_dataset(tx, sel.name,
                                                                                            sel.version)


def prepare(tx: Tx, caller: Principal, req: VerifyBatch) -> Prepared | None:
    """Read a batch's items before the write lock is taken (``SigningInterceptor._warm``): for 10,000 items this is
    most of a Verify's work. None if anything is amiss; the handler then checks everything again and says what."""
    try:
        found = _warm_grant(tx, caller, req.grant_id, req.template)
        if found is None:
            return None
        grant_id, settings, chosen, parsed, info = found
        ids, claims = _read_items(info, settings, chosen, parsed, req)
        return Prepared(grant_id, chosen.expression, info.version, ids, claims)
    except (SandboxError, checks.TemplateError):
        return None


def verify(call: Call, req: VerifyBatch, cache: ArrayCache, index: EntityIndex, counts: EntityCounts,
           signer: audit.AuditLog, prepared: Prepared | None = None) -> Deferred:
    """Check and charge now (in the call's transaction); the Deferred's ``compute`` returns a ``VerifyOutcome``.
    ``prepared`` is ``prepare``'s reading of this very batch, used when it was made for this grant, template and
    dataset version (which the grant pins, so it cannot have changed since)."""
    auth, settings, chosen, parsed = _granted(call, req.grant_id, req.template)
    info = auth.dataset
    if prepared is not None and (prepared.grant_id, prepared.expression, prepared.version) == (
            auth.grant.id, chosen.expression, info.version) and len(prepared.ids) == len(req.items):
        ids, claims = prepared.ids, prepared.claims
    else:
        ids, claims = _read_items(info, settings, chosen, parsed, req)
    n = len(ids)
    state = policy.charge(call, auth, Budget(0, 0), quota=n)
    counts.count(call.tx, auth.grant.id, ids, settings.per_entity_limit, what="checked")
    batch = _recorded_digest(call) or wv.batch_digest((it.entity_id, it.claim, it.consent_ref) for it in req.items)
    terms = auth.grant.terms

    def compute() -> VerifyOutcome:
        rows, known = index.rows(info, settings.id_column, ids)
        ok = evaluate(info, cache, parsed, rows, claims) & known
        results = tuple("MATCH" if m else ("UNKNOWN_ENTITY" if settings.reveal_unknown and not k else "NO_MATCH")
                        for m, k in zip(ok.tolist(), known.tolist()))
        certificates: tuple[Certificate, ...] = ()
        if req.certificates:
            certificates = tuple(_certificate(signer, call, terms.scenario_id, auth.grant.id, info, chosen, item,
                                              entity, result, batch)
                                 for item, entity, result in zip(req.items, ids, results))
        return VerifyOutcome(results, certificates, state.usage.quota_used, state.quota_cap, signer.public_key)

    return Deferred(compute)


def _recorded_digest(call: Call) -> str:
    """The batch digest the boundary's description of this request already holds (``sandbox.describe``), so that
    it is computed once; "" if the description does not have it."""
    try:
        doc = json.loads(call.request) if call.request else {}
    except ValueError:
        return ""
    value = doc.get("items_sha256") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def _certificate(signer: audit.AuditLog, call: Call, scenario_id: str, grant_id: str, info: DatasetInfo,
                 template: CheckTemplate, item: VerifyItem, entity: str, result: str, batch: str) -> Certificate:
    """One result, signed; the entity digest covers the id as the dataset holds it (an integer id without leading
    zeros), so "007" and "7" name the same person."""
    salt = wv.new_salt()
    doc = {
        "version": wv.CERTIFICATE_VERSION, "grant_id": grant_id, "scenario_id": scenario_id,
        "dataset": info.schema.name, "dataset_version": info.version, "template": template.name,
        "expression": template.expression, "salt": salt, "entity_sha256": wv.entity_digest(salt, entity),
        "claim_sha256": wv.claim_digest(salt, item.claim), "consent_sha256": wv.consent_digest(salt, item.consent_ref),
        "result": result, "issued_at_ms": call.now_ms, "audit_seq": call.reserved_seq, "batch_sha256": batch,
    }
    body = wv.certificate_json(doc)
    return Certificate(body, signer.sign_certificate(body))


# -- private mode ---------------------------------------------------------------------------------------------------

def _private_key(secret: bytes, grant_id: str, template: CheckTemplate) -> bytes:
    return wv.scalar_from(secret, f"{grant_id}\n{template.name}\n{template.expression}".encode())


def private_scope(grant_id: str, template: str) -> str:
    return f"{grant_id}/{template}"


def _stored_text(col: ColumnSchema, value: object) -> str:
    if col.type is ColumnType.CATEGORICAL:
        return col.categories[int(value)]  # type: ignore[call-overload, no-any-return]
    if col.type in (ColumnType.INTEGER, ColumnType.FLOAT):
        return wv.canonical_claim(col.type.value, repr(float(value)))  # type: ignore[arg-type]
    return str(value)


class PrivateSets:
    """Each (grant, template, dataset version)'s private set, built once (seconds for 30,000 rows) and kept (LRU)."""

    def __init__(self, cache: ArrayCache, index: EntityIndex, secret: bytes, keep: int = 8) -> None:
        self._cache = cache
        self._index = index
        self._secret = secret
        self._keep = keep
        self._lock = threading.Lock()
        self._building = threading.Lock()
        self._sets: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def get(self, grant_id: str, template: CheckTemplate, info: DatasetInfo, settings: VerificationSettings) -> bytes:
        key = (grant_id, template.name, info.version)
        with self._lock:
            found = self._sets.get(key)
            if found is not None:
                self._sets.move_to_end(key)
                return found
        with self._building:  # one build at a time: the CPU is better spent finishing one than starting two
            with self._lock:
                found = self._sets.get(key)
            if found is None:
                found = self._build(grant_id, template, info, settings)
                with self._lock:
                    self._sets[key] = found
                    while len(self._sets) > self._keep:
                        self._sets.popitem(last=False)
        return found

    def _build(self, grant_id: str, template: CheckTemplate, info: DatasetInfo,
               settings: VerificationSettings) -> bytes:
        parsed = checks.parse(template.expression)
        index = self._index.entities(info, settings.id_column)
        ids = list(index)
        rows = np.fromiter(index.values(), dtype=np.int64, count=len(index))
        fixed = checks.Template(tuple(a for a in parsed.atoms if a.kind == "fixed"))
        keep = evaluate(info, self._cache, fixed, rows, []) if fixed.atoms else np.ones(len(rows), dtype=bool)
        data = self._cache.columns(info, [a.column for a in parsed.parameters])
        cols = [_column(info, a.column) for a in parsed.parameters]
        for a, col in zip(parsed.parameters, cols):
            keep &= _present(col, data[a.column][rows])
        scope = private_scope(grant_id, template.name)
        k = _private_key(self._secret, grant_id, template)
        points = []
        values = [data[a.column][rows].tolist() for a in parsed.parameters]
        for i in np.flatnonzero(keep).tolist():
            texts = [_stored_text(col, v[i]) for col, v in zip(cols, values)]
            points.append(wv.to_point(wv.item_hash(scope, ids[i], texts)))
        points = wv.raise_to(k, points)
        size = -(-max(len(points), 1) // PRIVATE_PAD) * PRIVATE_PAD
        pad_key = hmac.new(self._secret, f"pad\n{scope}\n{info.version}".encode(), hashlib.sha256).digest()
        for j in range(size - len(points)):  # dummies: fixed for the grant, so two downloads do not tell them apart
            points.append(wv.to_point(hashlib.sha512(pad_key + j.to_bytes(8, "big")).digest()))
        return b"".join(sorted(points))


def private_set(call: Call, grant_id: str, template: str, sets: PrivateSets) -> bytes:
    """The grant's private set for an equality template (free: it is the same for every call)."""
    auth, settings, chosen, _ = _granted(call, grant_id, template, private=True)
    return sets.get(auth.grant.id, chosen, auth.dataset, settings)


def warm_private_set(tx: Tx, caller: Principal, grant_id: str, template: str, sets: PrivateSets) -> None:
    """Build the set before the write lock is taken, for a caller the grant names (the handler checks again)."""
    found = _warm_grant(tx, caller, grant_id, template)
    if found is not None and found[1].private_mode and found[3].equality_only:
        sets.get(found[0], found[2], found[4], found[1])


def verify_private(call: Call, req: PrivateBatch, secret: bytes) -> Deferred:
    """Charge the batch's points to the quota now; the Deferred's ``compute`` raises them to the grant's key."""
    auth, _settings, chosen, _ = _granted(call, req.grant_id, req.template, private=True)
    n = len(req.blinded)
    if not 1 <= n <= MAX_BATCH:
        raise _bad(f"send 1 to {MAX_BATCH} blinded points per batch")
    if len(req.consent_refs) != n:
        raise SandboxError(ErrorCode.CONSENT_REQUIRED, "send one consent reference per point")
    _check_consents(auth.dataset, req.consent_refs)
    bad = next((i for i, p in enumerate(req.blinded) if not wv.valid_point(p)), None)
    if bad is not None:
        raise _bad(f"point {bad + 1} is not a valid Ristretto255 encoding (32 bytes, not the identity)")
    state = policy.charge(call, auth, Budget(0, 0), quota=n)
    key = _private_key(secret, auth.grant.id, chosen)

    def compute() -> PrivateOutcome:
        return PrivateOutcome(tuple(wv.raise_to(key, req.blinded)), state.usage.quota_used, state.quota_cap)

    return Deferred(compute)


def certificate_entry(tx: Tx, certificate_json: bytes, signature: bytes, public_key: bytes) -> int:
    """The audit entry a certificate names, if the sandbox signed the certificate and the entry records its batch."""
    problems = wv.check_certificate(certificate_json, signature, public_key)
    if problems:
        raise SandboxError(ErrorCode.CERTIFICATE_INVALID, problems[0])
    doc = wv.load_certificate(certificate_json)
    entry = audit.get_entry(tx, int(doc["audit_seq"]))
    try:
        recorded = json.loads(entry.record.request) if entry is not None and entry.record.request else {}
    except ValueError:
        recorded = {}
    if (entry is None or entry.record.method != "/sandbox.v1.VerificationService/Verify"
            or entry.record.grant_id != doc["grant_id"] or recorded.get("items_sha256") != doc["batch_sha256"]):
        raise SandboxError(ErrorCode.INTERNAL, log_detail=f"certificate names entry {doc['audit_seq']}, which does "
                                                          "not record its batch")
    return entry.seq
