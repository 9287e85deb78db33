"""The one plotting helper: a headless pyplot and an atomic PNG save (a killed job leaves no figure)."""

from __future__ import annotations

from workflow_scripts.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, dest: str, dpi: int = 110) -> None:
    """Write ``fig`` as a PNG to ``dest`` atomically and close it."""
    plt = pyplot()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
