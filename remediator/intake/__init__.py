"""Wire formats → Alert. Pure parsing: no I/O, no knowledge of rules."""
