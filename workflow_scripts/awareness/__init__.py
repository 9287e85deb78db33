"""Dissonance awareness: tell novel, familiar and dissonant facts apart from a model's internals."""
