"""CKKS scoring on tenseal (built in a later issue). Pure library: no gRPC, no SQLite."""
