"""One router per resource (models, versions, aliases, artifacts, devices, assignment, telemetry,
health, V2 inference, the audit trail, model cards, ...)."""
