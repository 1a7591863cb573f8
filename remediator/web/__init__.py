"""HTTP surface: webhook intake, probes, metrics, the audit and control API."""
