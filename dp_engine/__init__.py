"""Differential-privacy queries on opendp (built in a later issue). Pure library: no gRPC, no SQLite."""
