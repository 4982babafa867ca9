"""Payload models, one module per event family (the ``data`` of an envelope)."""
