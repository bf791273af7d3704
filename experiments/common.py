"""Helpers the experiment scripts share: writing a results table as CSV and a matplotlib figure as PNG.

The scripts run as files (`python experiments/<study>/run.py`), not as a package, so they import this one by
putting this folder on sys.path first:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import pyplot, save_figure, write_csv  # noqa: E402
"""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Writes `rows` (dicts with the same keys, at least one) to `path`, a header line of the first row's keys."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (the scripts only write files). Imported on use:
    matplotlib is needed only for the figures."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path) -> None:
    """Lays out `fig`, writes it to `path` at 110 dpi and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
