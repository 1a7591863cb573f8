"""`kubernetes.*`: rollout restart, bounded scale, bounded pod delete (issue: Kubernetes)."""
