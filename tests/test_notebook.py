"""The Colab notebook (notebooks/stylejax.ipynb): committed without outputs, and run top to
bottom on the CPU with the random test weights at a tiny size, as CI runs it."""

from __future__ import annotations

import ast
import importlib.util
import sys

import nbformat
from PIL import Image as PILImage
from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "stylejax.ipynb"


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stripped_and_valid():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, (
            f"commit the notebook without outputs (cell {cell.source[:60]!r})")
        assert "execution" not in cell.metadata, "commit it without execution timings"


def test_first_code_cell_sets_the_repository_and_the_parameters():
    first = _code_cells(nbformat.read(NOTEBOOK, as_version=4))[0]
    assert "parameters" in first.metadata.get("tags", [])
    assigned = {t.id: node.value for node in ast.parse(first.source).body
                if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert isinstance(assigned.get("REPO_URL"), ast.Constant), "REPO_URL = '...' in cell 1"
    for name in ("SIZE", "EPOCHS", "ITERS", "BATCH", "WEIGHTS", "INSTALL", "UPLOAD"):
        assert name in assigned


def _kernel_manager():
    """A kernel manager that starts ipykernel under this interpreter (the venv's), whatever
    kernel specs the user has installed elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    return KernelManager(kernel_name="python3",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def _execute(nb, folder):
    """Runs ``nb`` in place in a fresh kernel working in ``folder``; a cell that raises fails
    the calling test (nbclient's CellExecutionError)."""
    from nbclient import NotebookClient

    NotebookClient(nb, km=_kernel_manager(), timeout=300,
                   resources={"metadata": {"path": str(folder)}}).execute()


def test_notebook_runs_on_cpu(weights_path, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The checkout's installed package, the test weights, one tiny size throughout.
    for name, value in {"STYLEJAX_NB_INSTALL": "0", "STYLEJAX_WEIGHTS": str(weights_path),
                        "STYLEJAX_NB_SIZE": "40", "STYLEJAX_NB_EPOCHS": "2",
                        "STYLEJAX_NB_ITERS": "2", "STYLEJAX_NB_BATCH": "2",
                        "STYLEJAX_NB_VIDEO_FRAMES": "3",
                        "STYLEJAX_NB_PRECISION": "auto", "JAX_PLATFORMS": "cpu"}.items():
        monkeypatch.setenv(name, value)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    _execute(nb, tmp_path)

    assert nb.cells[0].outputs[0].text.strip() == sys.executable
    text = "\n".join(o.get("text", "") for c in _code_cells(nb) for o in c.outputs)
    assert "precision: float32" in text
    for name in ("final.png", "contact_sheet.png", "batch_0.png", "batch_1.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert not (tmp_path / "weights").exists(), "STYLEJAX_WEIGHTS given: nothing to convert"
    with PILImage.open(tmp_path / "out" / "video.gif") as gif:  # section 9's clip
        assert gif.n_frames == 3 and gif.size == (32, 32)
    # The preview (status line, image, loss curve) was displayed once and updated in place.
    cell = next(c for c in nb.cells if "stylize_epochs(" in c.source)
    shown = [o for o in cell.outputs if o.output_type == "display_data"]
    assert len(shown) == 3, [o.output_type for o in cell.outputs]
    assert shown[0].data["text/markdown"].startswith("epoch 2/2: loss ")
    assert "image/png" in shown[1].data
    if importlib.util.find_spec("matplotlib"):
        assert "image/png" in shown[2].data  # the curve, drawn over the empty placeholder


def test_notebook_converts_the_weights(vgg_params, tmp_path, monkeypatch):
    """Without STYLEJAX_WEIGHTS (and no Google Drive) the notebook converts the weights into
    weights/ beside it: here from a local Keras-layout file, up to loading them."""
    from fixtures import write_keras_h5

    source = tmp_path / "vgg19_notop.h5"
    write_keras_h5(source, vgg_params)
    monkeypatch.delenv("STYLEJAX_WEIGHTS", raising=False)
    monkeypatch.setenv("STYLEJAX_NB_INSTALL", "0")
    monkeypatch.setenv("STYLEJAX_NB_WEIGHTS_SOURCE", str(source))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    last = next(i for i, c in enumerate(nb.cells) if "load_vgg19(" in c.source)
    nb.cells = nb.cells[:last + 1]
    _execute(nb, tmp_path)
    assert (tmp_path / "weights" / "vgg19.msgpack").is_file()
    assert f"weights: {tmp_path / 'weights' / 'vgg19.msgpack'}" in nb.cells[last].outputs[-1].text
