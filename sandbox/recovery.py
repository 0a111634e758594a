"""Start-up after a crash: close, on the record, what a killed server left open.

A reservation commits its charge and its RESERVED audit entry before the computation starts; the answer's
release is a second entry. A server killed in between leaves a reservation with no release, and, for a DP
query with an idempotency key, a record that stays in progress. At start-up each such reservation gets an
entry saying its answer was lost in a crash and never released (the charge stands: a charge is never
refunded once computation may have started), and each such record becomes ``lost``, whose retry is told
exactly that (RELEASE_LOST). ``sandbox audit verify`` then finds nothing unexplained.
"""

from __future__ import annotations

import logging

from sandbox.audit import LOST, LOST_CODE, AuditLog, Reservations, iter_entries
from sandbox.domain import AuditRecord

log = logging.getLogger("sandbox.recovery")

def close_open_records(audit: AuditLog) -> int:
    """Close every reservation without a release and every in-progress idempotency record; returns how many."""
    closed = 0
    with audit.db.write() as tx:
        book = Reservations()
        for entry, _ in iter_entries(tx):
            book.see(entry)
        for entry in book.still_open():
            r = entry.record
            audit.append(tx, AuditRecord(r.principal_id, r.method, LOST, LOST_CODE, r.scenario_id, r.grant_id, 0, 0,
                                           r.request_sha256, "", r.request))
            closed += 1
        lost = tx.release_mark_lost()
    if closed or lost:
        log.warning("closed %d reservation(s) and %d idempotency record(s) left open by a crash", closed, lost)
        audit.after_commit()
    return closed + lost
