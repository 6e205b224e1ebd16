"""Interactive use: JupyterLab opens a chapter .py as a notebook and saves it back unchanged.

JupyterLab reads files through its server's contents manager, which the jupytext server extension
replaces by jupytext's; one test drives that same class on a copy of the chapters, with the repository's
``jupytext.toml``, another a running Jupyter server through its contents API, as JupyterLab does.
"""
import asyncio
import json
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


@pytest.fixture()
def jupyter_server(tmp_path):
    """A Jupyter server as ``jupyter lab`` starts it (the environment's server extensions, jupytext's among them),
    on 127.0.0.1 with a token, serving a copy of the chapters and the repository's ``jupytext.toml``."""
    import secrets
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    shutil.copytree(REPO / "chapters", tmp_path / "chapters", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "jupytext.toml", tmp_path / "jupytext.toml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"

    def api(method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{base}{path}", method=method, data=None if body is None else
                                     json.dumps(body).encode(), headers={"Authorization": f"token {token}",
                                                                         "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Jupyter server did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield api, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # starts a Jupyter server (a few seconds)
def test_saving_through_a_running_jupyter_server_leaves_the_chapters_byte_identical(jupyter_server):
    """What JupyterLab does on open, run and save, through the server's contents API: GET the chapter as a
    notebook, set the kernelspec (from the server's default kernel, as JupyterLab does when its kernel starts)
    and the language info, add outputs, PUT it back. The .py on disk must not change by one byte: the committed
    header is what JupyterLab writes."""
    api, root = jupyter_server
    specs = api("GET", "/api/kernelspecs")
    spec = specs["kernelspecs"][specs["default"]]["spec"]
    for src in sorted((REPO / "chapters").glob("[0-9][0-9]_*.py")):
        rel = f"chapters/{src.name}"
        model = api("GET", f"/api/contents/{rel}?type=notebook&content=1")
        assert model["type"] == "notebook", f"{rel}: the server did not open it as a notebook (no jupytext?)"
        nb = model["content"]
        nb["metadata"]["kernelspec"] = {"name": specs["default"], "display_name": spec["display_name"],
                                        "language": spec["language"]}
        nb["metadata"]["language_info"] = {"name": "python", "version": "3", "mimetype": "text/x-python"}
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
                cell["execution_count"] = 1
        api("PUT", f"/api/contents/{rel}", {"type": "notebook", "format": "json", "content": nb})
        assert (root / rel).read_bytes() == src.read_bytes(), f"saving {rel} through Jupyter changed the file"
    assert not list(root.rglob("*.ipynb")), "no .ipynb is written beside the chapters"
