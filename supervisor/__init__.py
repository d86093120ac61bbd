"""Runtimes that start model copies, placement, health checks and restarts with back-off."""
