"""Helpers every floor may use, importing nothing of this package: network addresses, secret redaction and
log formats, metrics."""
