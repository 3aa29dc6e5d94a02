"""Every notebook runs top to bottom (in the small setting, ``CIRCUITLENS_SMALL=1``).

Execution, not output diffing: a cell that raises fails the test with the cell's error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_are_there() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart",
        "02_circuit_discovery",
        "03_ablation_and_mapping",
        "04_circuit_distillation",
        "05_your_own_model_and_task",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbclient  # the dev extra that scripts/setup.sh installs brings these
    import nbformat

    monkeypatch.setenv("CIRCUITLENS_SMALL", "1")
    # one thread in the kernel: tiny models gain nothing from two, and a busy machine makes
    # two spinning OpenMP threads ten times slower (measured: 14 s vs 3-4 min per notebook)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    # the kernel spec's argv starts with 'python', which jupyter_client replaces by this
    # interpreter (sys.executable): the notebooks run in the same environment as the tests
    client.execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_executed(path: Path) -> None:
    """The committed notebook carries the outputs of one full top-to-bottom run
    (``scripts/run_notebooks.py``), so that it reads on a code host without running it."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{path.name} is not saved from one top-to-bottom run: "
        "run `.venv/bin/python scripts/run_notebooks.py` and commit the result"
    )
    assert nb.metadata.get("circuitlens", {}).get("setting") == "full"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert outputs, f"{path.name} has no outputs"
    assert not [o for o in outputs if o.get("output_type") == "error"]
