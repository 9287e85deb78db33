"""The one training routine every arm uses, and per-neuron usage accumulation."""
