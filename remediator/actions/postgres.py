"""`postgres.terminate_queries`: bounded termination of stuck queries (issue: PostgreSQL)."""
