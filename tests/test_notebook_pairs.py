"""Each notebook and its percent-format .py twin must hold the same cells (jupytext pairing)."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(ipynb):
    twin = ipynb.with_suffix(".py")
    assert twin.exists(), f"{ipynb.name} has no paired .py twin"
    assert _cells(jupytext.read(ipynb)) == _cells(jupytext.read(twin)), (
        f"{ipynb.name} and {twin.name} differ: run `jupytext --sync {ipynb}`")
