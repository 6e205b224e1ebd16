"""Interactive use: JupyterLab opens a chapter .py as a notebook and saves it back unchanged.

JupyterLab reads files through its server's contents manager, which the jupytext server extension
replaces by jupytext's; this test drives that same class on a copy of the chapters, with the repository's
``jupytext.toml``.
"""
import asyncio
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def lab_contents(tmp_path):
    jcm = pytest.importorskip("jupytext.async_contentsmanager")
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

    shutil.copytree(REPO / "chapters", tmp_path / "chapters", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "jupytext.toml", tmp_path / "jupytext.toml")
    return jcm.build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(root_dir=str(tmp_path)), tmp_path


def test_chapters_open_as_notebooks_and_save_back_unchanged(lab_contents):
    cm, root = lab_contents

    async def roundtrip(rel: str) -> tuple[dict, str]:
        model = await cm.get(rel)
        nb = model["content"]
        for cell in nb.cells:  # what a session adds: outputs, execution counts, UI state, language info
            cell.metadata["collapsed"] = False
            if cell.cell_type == "code":
                cell.outputs = [{"output_type": "stream", "name": "stdout", "text": "ran"}]
                cell.execution_count = 1
        nb.metadata["language_info"] = {"name": "python"}
        await cm.save({"type": "notebook", "content": nb}, rel)
        return model, (root / rel).read_text()

    for src in sorted((REPO / "chapters").glob("[0-9][0-9]_*.py")):
        rel = f"chapters/{src.name}"
        model, saved = asyncio.run(roundtrip(rel))
        assert model["type"] == "notebook", f"{rel} opens as {model['type']}"
        code = [c for c in model["content"].cells if c.cell_type == "code"]
        assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{rel}: papermill parameters cell"
        assert saved == src.read_text(), f"saving {rel} from JupyterLab changed the file (see jupytext.toml)"
    assert not list(root.rglob("*.ipynb")), "no .ipynb is written beside the chapters"


def test_widgets_and_jupytext_have_their_jupyterlab_extensions():
    """The lab extensions that render ipywidgets and add jupytext's notebook viewer are installed."""
    pytest.importorskip("ipywidgets")
    from jupyter_core.paths import jupyter_path

    found = {ext for d in map(Path, jupyter_path("labextensions"))
             for ext in ("@jupyter-widgets/jupyterlab-manager", "jupyterlab-jupytext") if (d / ext / "package.json").exists()}
    assert found == {"@jupyter-widgets/jupyterlab-manager", "jupyterlab-jupytext"}
