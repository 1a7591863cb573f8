"""`docker.restart`: restart a container through the Docker Engine API (issue: Docker)."""
