"""Collaborative editing: clients' frozen-MEMIT edits merged (GLOBAL, SA, TA, TIES, CollabEdit), single
round (``clients``: per-fact statistics, computed once) and multi-round (``rounds``: the running
covariance state). ``merges`` holds the pure tensor functions."""
