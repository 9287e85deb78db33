"""What a run must learn and keep (named scenarios), the seeded fact slices, and the run table.

Torch-free and pandas-free at import, so building the DAG stays light."""
