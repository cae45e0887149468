"""Capture real traffic and turn it into mocks: records, redaction, inference and the outputs."""
