"""Embedded default configs (ml_collections), so the CLI runs with no files beside it."""
