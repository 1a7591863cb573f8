"""Pure values that flow through remediator: Alert, Rule, Decision. No I/O here."""
