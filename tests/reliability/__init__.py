"""Reliability tests: hostile layers, hostile build contexts (issue 7)."""
