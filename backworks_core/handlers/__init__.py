"""Handlers the core answers with itself: `static` and Python functions."""
