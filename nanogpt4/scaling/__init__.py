"""Predictable scaling: fit small runs, register a prediction for a big one before it trains, verify it after."""
