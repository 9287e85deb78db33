"""Model loading, conversion and the per-architecture module map."""
