"""One module per pipeline stage: ingest, validate, template, route, deliver, track."""
