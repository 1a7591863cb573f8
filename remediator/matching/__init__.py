"""Rule matching: matcher semantics, templates, rule files, the alertname index."""
