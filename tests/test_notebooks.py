"""The worked examples in notebooks/ run from top to bottom (nbclient, a fresh kernel each).

The notebooks check their own results with asserts (parity errors, identical generated ids,
falling losses), so an error in any cell fails the test. The pretraining notebook runs 60 steps
here instead of its 1200 (BLIP_NOTEBOOK_STEPS)."""

from __future__ import annotations

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


def _run(name: str, monkeypatch, **env) -> list[str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # The kernel is this interpreter, so it sees the same installed packages as the tests.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()
    return ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in notebook.cells
            if cell.cell_type == "code"]


def _check_generation(outputs: str) -> None:
    assert "num_beams=1: identical ids: True" in outputs and "num_beams=3: identical ids: True" in outputs


def _check_pretraining(outputs: str) -> None:
    assert "retrieval/txt_r1" in outputs and "each image's best caption is its own" in outputs
    assert outputs.count("against the scene: in_grammar") == 4


# notebook -> (environment for the run, modules it needs, check of its printed output)
NOTEBOOK_CASES = {
    "checkpoints_and_generation.ipynb": ({}, ("torch", "transformers"), _check_generation),
    "pretrain_caption_retrieve_embedded.ipynb": ({"BLIP_NOTEBOOK_STEPS": "60"}, (), _check_pretraining),
}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_CASES))
def test_notebook_runs(name, monkeypatch):
    env, needs, check = NOTEBOOK_CASES[name]
    for module in needs:
        pytest.importorskip(module)
    check("\n".join(_run(name, monkeypatch, **env)))


def test_every_notebook_is_tested_and_stored_with_outputs():
    """A new notebook needs a case here; stored notebooks show their outputs (they are read on
    GitHub without running them)."""
    names = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
    assert names == sorted(NOTEBOOK_CASES)
    for name in names:
        notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code and all(c.get("outputs") for c in code), f"{name}: a code cell without stored output"
