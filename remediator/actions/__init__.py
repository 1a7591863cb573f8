"""Actions are plugins: one module per family registers its types in `registry`.

The engine only ever calls `registry.get(type)`; adding an action type never touches it.
"""
