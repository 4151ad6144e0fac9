"""Scenarios: each starts its own relay on a fresh database and returns figures."""
