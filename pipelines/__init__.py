"""Prefect orchestration over the ganforge DVC pipeline (src/ganforge knows nothing of it)."""
