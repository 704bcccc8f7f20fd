"""Serving: the OpenAI-compatible API over the engine (api.py) and the served snapshots (models.py)."""
