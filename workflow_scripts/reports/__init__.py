"""Tables and figures people look at: one module per family, one plotting helper."""
