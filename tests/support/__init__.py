"""Helpers that tests share but that are not fixtures themselves."""
