"""Every notebook under notebooks/ runs top to bottom (outputs are cleared in the repository)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# ~20 s each on 2 cores; the APIs they walk through have their own tests (tests/models/test_dit.py,
# tests/models/test_rope_time.py, tests/samplers/, the embedded model's tests/test_default_model.py); `scaling`
# stays in the default suite
SLOW = {"inside_the_model", "samplers", "quickstart"}


def _param(path):
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if path.stem in SLOW else [])


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks with outputs cleared"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()


def test_slow_list_names_existing_notebooks():
    missing = SLOW - {p.stem for p in NOTEBOOKS}
    assert not missing, f"slow-list names without a notebook: {sorted(missing)}"
