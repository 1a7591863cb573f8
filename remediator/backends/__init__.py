"""Journal, state and audit behind small interfaces; a backend is chosen in config."""
