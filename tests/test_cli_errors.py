"""Newcomer papercuts: bad input is one ``error: ...`` line and exit 2 (never a traceback), a run records into
results/ only with ``--record``, chapters show their progress on the terminal (never in the book), and glued
values are visible when a chapter runs outside the book build."""
import ctypes
import dataclasses
import io
import json
import os
import subprocess
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


# ---------------------------------------------------------------- the built-in profiles' published folders

def _published_state() -> dict:
    """Name, size and mtime of every file under the repository's book/ (outside _build) and results/."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for d in ("book", "results")
            for p in (REPO / d).rglob("*") if p.is_file() and "_build" not in p.parts}


def test_a_profile_file_cannot_take_over_a_builtin_profiles_published_folders(tmp_path, capsys):
    """A file named after a built-in (its name defaults to the file's stem) or naming one: refused before anything
    is written, for every command; only the built-in default profile itself writes book/."""
    from atlib.studies.profiles import PROFILES, UnknownProfileError, get_profile, profile_toml

    before = _published_state()
    stem = tmp_path / "t2" / "fashion.toml"
    stem.parent.mkdir()
    stem.write_text('extends = "smoke"\n')
    named = tmp_path / "mine.toml"
    named.write_text('extends = "smoke"\nname = "fashion"\n')
    for argv in (["book", "--profile", str(stem)], ["book", "--profile", str(named), "--out", str(REPO / "book")],
                 ["book", "--profile", str(named), "--record", "--out", str(tmp_path / "o")],
                 ["compute", "--profile", str(stem), "--cache-dir", str(tmp_path / "c")],
                 ["pilot", "convergence", "--profile", str(named), "--cache-dir", str(tmp_path / "c")]):
        assert cli.main(argv) == 2, argv
        err = _one_error_line(capsys)
        assert "name = 'fashion' is the built-in profile's" in err and "dataset" in err, err
    assert _published_state() == before and not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
    # a name that is a path would reach outside _build/books/ and results/
    escape = tmp_path / "escape.toml"
    escape.write_text('extends = "smoke"\nname = "../book"\n')
    with pytest.raises(UnknownProfileError, match="cannot name a folder"):
        get_profile(escape)
    # a profile derived in Python under a built-in's name, too
    with pytest.raises(UnknownProfileError, match="name = 'fashion' is the built-in"):
        runner.run_book(dataclasses.replace(PROFILES["fashion"], epochs=1), html=False)
    assert _published_state() == before
    # a file that resolves to the built-in itself (what a build writes as <out>/profile.toml) is that profile
    same = tmp_path / "profile.toml"
    same.write_text(profile_toml(PROFILES["fashion"]))
    assert get_profile(same) == PROFILES["fashion"]


def test_out_never_inside_the_repositorys_own_folders(tmp_path):
    from atlib.studies.profiles import DEFAULT_PROFILE

    runner.check_out(DEFAULT_PROFILE, REPO / "book")  # the default profile (re)publishes its book
    runner.check_out("smoke", tmp_path / "new")
    runner.check_out("smoke", REPO / "_build" / "books" / "smoke")
    for out, what in ((REPO / "book", "published"), (REPO / "book" / "sub", "published"), (REPO, "contains the repository"),
                      (REPO.parent, "contains the repository"), (REPO / "results" / "smoke", "results/"),
                      (REPO / "chapters" / "x", "chapters/")):
        with pytest.raises(BadInputError, match=what):
            runner.check_out("smoke", out)
    with pytest.raises(BadInputError, match="results/"):
        runner.check_out(DEFAULT_PROFILE, REPO / "results" / "fashion")


# ---------------------------------------------------------------- bad input: one error line, exit code 2

def test_argparse_errors_are_one_error_line_too(capsys):
    for argv, fragment in ((["bench", "--batch-size", "0"], "--batch-size: '0': need a whole number >= 1"),
                           (["bench", "--repeats", "x"], "--repeats: 'x'"),
                           (["book", "--workers", "0"], "--workers='0': need a whole number >= 1"),
                           (["compute", "--bogus"], "unrecognized arguments: --bogus"),
                           ([], "required")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
        assert fragment in _one_error_line(capsys), argv


def test_bad_workers_from_the_environment_on_compute(monkeypatch, capsys, tmp_path):
    from atlib.book import compute

    def never(*a, **kw):
        raise AssertionError("work started")

    monkeypatch.setattr(compute.ex, "training_runs", never)
    monkeypatch.setenv("ATLIB_WORKERS", "abc")
    for argv in (["compute", "--profile", "smoke", "--cache-dir", str(tmp_path / "c")],
                 ["pilot", "convergence", "--profile", "smoke", "--cache-dir", str(tmp_path / "c")]):
        assert cli.main(argv) == 2
        assert "ATLIB_WORKERS='abc'" in _one_error_line(capsys)
    assert not (tmp_path / "c").exists()


def test_pilot_passes_its_executor_on(monkeypatch, tmp_path):
    from atlib.book import pilot

    seen = {}

    def convergence(ctx, progress=True):
        seen["executor"] = ctx.executor
        raise KeyboardInterrupt  # stop here: nothing is trained

    monkeypatch.setattr(pilot, "convergence", convergence)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["pilot", "convergence", "--profile", "smoke", "--executor", "dask-local:2", "--cache-dir",
                  str(tmp_path / "c"), "--out", str(tmp_path / "p.json")])
    assert seen["executor"] == "dask-local:2"


def _unprivileged(argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m atlib ARGV`` in a process that file permissions apply to: as root (a container), the child drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its capability bounding set before it starts."""
    drop = None
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)

        def drop():
            for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return subprocess.run([sys.executable, "-m", "atlib", *argv], capture_output=True, text=True, preexec_fn=drop,
                          env=os.environ | {"PYTHONPATH": str(REPO)})


@pytest.mark.slow  # two fresh interpreters importing torch
def test_read_only_out_and_cache_are_named_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "existing").mkdir()
    ro.chmod(0o555)
    (ro / "existing").chmod(0o555)
    try:
        probe = _unprivileged(["bench", "--help"])
        if probe.returncode != 0:
            pytest.skip(f"cannot start an unprivileged child here: {probe.stderr[-300:]}")
        for argv, path in ((["book", "--profile", "smoke", "--out", str(ro / "out")], ro / "out"),
                           (["compute", "--profile", "smoke", "--cache-dir", str(ro / "existing")], ro / "existing")):
            res = _unprivileged(argv)
            assert res.returncode == 2, res.stderr
            assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
            assert f"{path} is not writable" in res.stderr
        assert not (ro / "out").exists() and list((ro / "existing").iterdir()) == []
    finally:
        ro.chmod(0o755)
        (ro / "existing").chmod(0o755)


def test_help_has_no_rst_quoting_and_every_option_says_what_it_does(capsys):
    for cmd in ([], ["book"], ["html"], ["compute"], ["pilot"], ["bench"]):
        with pytest.raises(SystemExit) as e:
            cli.main([*cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "``" not in text, cmd
        lines = text.splitlines()
        start = lines.index("options:")
        for i, line in enumerate(lines[start + 1:], start + 1):
            if line.startswith("  -") and not line.startswith("  -h"):
                described = "  " in line.strip() or (i + 1 < len(lines) and lines[i + 1].startswith(" " * 8)
                                                     and not lines[i + 1].lstrip().startswith("-"))
                assert described, f"{' '.join(cmd)}: {line.strip()} has no help text"
