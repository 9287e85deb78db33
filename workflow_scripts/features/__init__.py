"""Per-input features: internal (activations and gradients of every linear module) and output-only."""
