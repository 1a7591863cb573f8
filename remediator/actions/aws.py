"""`ecs.*`, `lambda.*`, `sqs.*`: bounded AWS remediations (issue: AWS)."""
