"""Metacognition beside the database's own: calibrators shipped for packaged models."""
