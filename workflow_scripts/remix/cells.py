"""REMIX cells (stage-1 mixing x stage-2 data x stage-2 mixing) from the config's grids; no torch, so
the rules can expand them while Snakemake builds the DAG."""

from __future__ import annotations

from dataclasses import dataclass

STAGE1 = ("none", "random")
STAGE2 = ("facts", "prose", "code", "arithmetic")
MIXING = ("none", "generic")
AFTER_STAGE1 = "after stage 1"  # the cell label of the stage-1 model


@dataclass(frozen=True)
class Cell:
    """One REMIX condition: stage-1 mixing, stage-2 data, stage-2 mixing."""

    stage1: str
    stage2: str
    mixing: str = "none"

    def __post_init__(self):
        for value, allowed, what in ((self.stage1, STAGE1, "stage1"), (self.stage2, STAGE2, "stage2"),
                                     (self.mixing, MIXING, "mixing")):
            if value not in allowed:
                raise ValueError(f"remix cell {what} must be one of {list(allowed)}, got {value!r}")

    @property
    def name(self) -> str:
        return f"{self.stage1}/{self.stage2}/{self.mixing}"


def cells_from_grids(grids) -> list[Cell]:
    """``remix.cells`` (a grid or a list of grids; list values expand as a product) -> distinct cells,
    in order."""
    from workflow_scripts.scenarios.runs import grid_points

    out: list[Cell] = []
    for point in grid_points(grids):
        unknown = set(point) - {"stage1", "stage2", "mixing"}
        if unknown:
            raise ValueError(f"remix.cells: unknown keys {sorted(unknown)} (stage1, stage2, mixing)")
        cell = Cell(point["stage1"], point["stage2"], point.get("mixing", "none"))
        if cell not in out:
            out.append(cell)
    return out


__all__ = ["AFTER_STAGE1", "Cell", "MIXING", "STAGE1", "STAGE2", "cells_from_grids"]
