"""Newcomer papercuts: bad input is one ``error: ...`` line and exit 2 (never a traceback), a run records into
results/ only with ``--record``, chapters show their progress on the terminal (never in the book), and glued
values are visible when a chapter runs outside the book build."""
import io
import json
import sys
import time

import pytest
import torch

import atlib.book.runner as runner
from atlib.book import cli
from atlib.book.runner import BadInputError, BookError, ChapterProgress, REPO
from atlib.core.runtime import DeviceError, pick_device


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- recording into results/

@pytest.fixture
def fake_run_book(monkeypatch):
    """``run_book`` replaced by a recorder of its arguments (cli imports it from the runner at call time)."""
    calls = []
    monkeypatch.setattr(runner, "run_book", lambda *a, **kw: calls.append((a, kw)))
    return calls


def test_book_records_only_when_asked(fake_run_book, tmp_path):
    for argv, record in ((["book", "--profile", "smoke", "--out", str(tmp_path)], False),
                         (["book", "--profile", "smoke", "--no-record"], False),
                         (["book", "--record"], True)):
        assert cli.main(argv) == 0
        assert fake_run_book[-1][1]["record"] is record, argv
    with pytest.raises(SystemExit) as e:
        cli.main(["book", "--record", "--no-record"])
    assert e.value.code == 2


def test_exit_codes_tell_bad_input_from_a_failed_run(monkeypatch, capsys):
    def fail(exc):
        def run_book(*a, **kw):
            raise exc
        monkeypatch.setattr(runner, "run_book", run_book)

    fail(BookError("chapter 04_distillation failed in cell 7"))
    assert cli.main(["book", "--profile", "smoke"]) == 1
    assert "04_distillation" in _one_error_line(capsys)
    fail(BadInputError("bad --out"))
    assert cli.main(["book", "--profile", "smoke"]) == 2
    assert "bad --out" in _one_error_line(capsys)


# ---------------------------------------------------------------- --device

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["book", "--profile", "smoke", "--device", "cuda", "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "'cuda'" in err and "CUDA is not available" in err and "leave out --device" in err and "cpu" in err
    assert not out.exists(), "nothing is touched"
    with pytest.raises(DeviceError):
        pick_device("cuda:0")


def test_malformed_device(tmp_path, capsys, monkeypatch):
    assert cli.main(["book", "--profile", "smoke", "--device", "gpu", "--out", str(tmp_path / "o")]) == 2
    err = _one_error_line(capsys)
    assert "'gpu'" in err and "cpu, cuda or cuda:N" in err
    assert cli.main(["compute", "--profile", "smoke", "--device", "gpu"]) == 2
    assert "'gpu'" in _one_error_line(capsys)
    monkeypatch.setenv("ATLIB_DEVICE", "tpu")
    with pytest.raises(DeviceError, match=r"\$ATLIB_DEVICE='tpu'.*unset \$ATLIB_DEVICE"):
        pick_device()
    assert isinstance(DeviceError("x"), ValueError) and pick_device("cpu").type == "cpu"


def _error_with_details(capsys) -> tuple[str, list[str]]:
    """The ``error: ...`` line and the indented detail lines after it (no traceback)."""
    first, *details = capsys.readouterr().err.splitlines()
    assert first.startswith("error: ") and "Traceback" not in first, first
    assert all(line.startswith("  ") for line in details), details
    return first, details


# ---------------------------------------------------------------- profile values

@pytest.mark.parametrize("line, fragment", [("linf_sweep = [0, 7.0]", "linf_sweep = [0.0, 7.0]: need"),
                                            ("l2_eps = 1000", "l2_eps = 1000.0: an L2 ε must be > 0 and at most"),
                                            ("lr = inf", "lr = inf: the learning rate must be finite"),
                                            ("linf_eps = 1.5", "linf_eps = 1.5: the main L∞ ε must lie in (0, 1]")])
def test_out_of_range_profile_values_are_one_error_line(tmp_path, capsys, line, fragment):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "smoke"\n{line}\n')
    out = tmp_path / "out"
    assert cli.main(["book", "--profile", str(bad), "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert fragment in err and str(bad) in err and not out.exists()


# ---------------------------------------------------------------- --data-root

def test_missing_data_root_fails_before_anything_is_trained(monkeypatch, capsys, tmp_path):
    from atlib.book import compute

    def never(*a, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(compute.ex, "training_runs", never)
    t0 = time.perf_counter()
    assert cli.main(["compute", "--profile", "fashion", "--data-root", "/nonexistent", "--device", "cpu"]) == 2
    assert time.perf_counter() - t0 < 60
    first, details = _error_with_details(capsys)  # what is wrong on a short first line, how to fix it after
    assert first == "error: fashion: the data root /nonexistent (--data-root) does not exist"
    assert any("train-images-idx3-ubyte" in line for line in details)
    assert any("apt-get install dataset-fashion-mnist" in line for line in details)
    out = tmp_path / "out"  # the book checks it before its output folder is touched
    assert cli.main(["book", "--profile", "fashion", "--data-root", str(tmp_path), "--out", str(out)]) == 2
    first, _ = _error_with_details(capsys)
    assert first == f"error: fashion: the data root {tmp_path} (--data-root) holds none of the fashion files"
    assert not out.exists()


# ---------------------------------------------------------------- --out

def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "README.md"
    f.write_text("keep me")
    for out in (f, f / "sub"):
        assert cli.main(["book", "--profile", "smoke", "--out", str(out)]) == 2
        err = _one_error_line(capsys)
        assert str(f) in err and "is a file, not a folder" in err
    assert f.read_text() == "keep me"


# ---------------------------------------------------------------- progress and glue in executed chapters

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _outputs(nb: dict) -> str:
    return json.dumps([c.get("outputs", []) for c in nb["cells"]])


@pytest.mark.slow  # starts a Jupyter kernel
def test_chapter_progress_on_the_terminal_never_in_the_notebook(tmp_path):
    """Two cells, run as the book runs them: the terminal shows the chapter, its cells and the time; the notebook
    holds only what the cells printed (and, in the book build, no echo of glued values)."""
    src = tmp_path / "01_tiny.py"
    src.write_text("# %%\nprint('first cell')\n\n# %%\nfrom atlib.studies.prose import glue\nglue('x', 1.5)\n")
    term = _Tty()
    with ChapterProgress("[1/1] 01_tiny", stream=term) as progress:
        done = runner.execute_chapter(src, tmp_path / "out", {}, progress=progress)
    shown = term.getvalue()
    assert "\r[1/1] 01_tiny: 2/2 cells, 0:" in shown and "elapsed" in shown and shown.endswith("\r\x1b[K")
    nb = json.loads(done.read_text())
    outputs = _outputs(nb)
    assert "first cell" in outputs
    assert "01_tiny" not in outputs and "cells" not in outputs and "glued" not in outputs
    assert "x" in json.dumps(nb["cells"][1]["outputs"]), "the value is glued (hidden) for the book"


def test_progress_without_a_terminal_is_occasional_plain_lines():
    log = io.StringIO()
    with ChapterProgress("[4/5] 04_distillation", stream=log, every=0.05) as progress:
        progress.write("\r3/12")
        time.sleep(0.3)
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 8 and "\r" not in log.getvalue()
    assert all(ln.startswith("[4/5] 04_distillation: 3/12 cells, 0:00 elapsed") for ln in lines)
    assert ChapterProgress("x", stream=log).every == 30


def test_glue_shows_values_outside_the_book_build(monkeypatch, capsys):
    from atlib.studies import prose

    monkeypatch.delenv("ATBOOK_BUILD", raising=False)
    prose.glue("x", 1.5)
    prose.glue("label", "L∞ PGD-20")
    assert capsys.readouterr().out.splitlines()[-2:] == ["glued: x = 1.5", "glued: label = L∞ PGD-20"]
    monkeypatch.setenv("ATBOOK_BUILD", "1")
    prose.glue("x", 1.5)
    assert "glued" not in capsys.readouterr().out


@pytest.mark.slow  # starts a Jupyter kernel
def test_glue_echo_in_an_interactive_kernel(tmp_path, monkeypatch):
    """Run as in JupyterLab (a kernel without ATBOOK_BUILD): one ``glued:`` line per cell in that cell's output."""
    import nbformat
    import papermill as pm

    monkeypatch.delenv("ATBOOK_BUILD", raising=False)
    spec = tmp_path / "kernels" / "kernels" / "plain"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"],
                                                  "display_name": "plain", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels"))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from atlib.studies.prose import glue\nglue('x', 1.5)\nglue('n_eval', 1000)"),
        nbformat.v4.new_code_cell("y = 2")])
    nbformat.write(nb, tmp_path / "in.ipynb")
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "run.ipynb"), kernel_name="plain",
                        cwd=str(REPO), progress_bar=False)
    cells = nbformat.read(tmp_path / "run.ipynb", as_version=4).cells
    text = [o.text for o in cells[0].outputs if o.output_type == "stream"]
    assert "".join(text) == "glued: x = 1.5, n_eval = 1000\n"
    assert cells[1].outputs == []
