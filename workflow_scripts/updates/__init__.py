"""Targeted continual updates: arms (full fine-tuning, LoRA, neuron strategies) and their metrics."""
