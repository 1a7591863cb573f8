"""The engine: guards in order, decisions, action runs, verification and escalation."""
