"""The sandbox server: identity, catalogue, scenarios and grants, budget ledger, audit log."""
