"""Federated training on Flower (built in a later issue). Knows nothing of grants or audit."""
