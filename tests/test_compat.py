"""The torchvision shim, each case in a fresh interpreter (the shim acts on process-global state)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO_ROOT


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


CPU_TORCH = torch.version.cuda is None and torch.version.hip is None
needs_cpu_torch = pytest.mark.skipif(not CPU_TORCH, reason="a GPU torch loads torchvision's extension itself")


@pytest.mark.slow  # a fresh interpreter importing torch
@needs_cpu_torch
def test_plain_import_fails_on_cpu_torch():
    r = run_py("import torchvision")
    assert r.returncode != 0, "plain `import torchvision` works here: the shim test below proves nothing"
    assert "torchvision::nms" in r.stderr


@pytest.mark.slow  # a fresh interpreter importing torch
def test_shim_makes_torchvision_usable():
    r = run_py("""
        import sys
        from atlib.core.compat import import_torchvision
        tv = import_torchvision()
        assert tv is sys.modules["torchvision"]
        import torch
        import torchvision.datasets
        from torchvision.utils import make_grid
        from torchvision.datasets import MNIST, FashionMNIST, CIFAR10
        g = make_grid(torch.rand(6, 3, 8, 8), nrow=3, padding=2)
        print(tuple(g.shape))
    """)
    assert r.returncode == 0, r.stderr
    # 3 columns and 2 rows of 8x8 tiles with 2-pixel padding around each: 2 + 3*(8+2), 2 + 2*(8+2)
    assert r.stdout.strip().splitlines()[-1] == "(3, 22, 32)"


@pytest.mark.slow  # a fresh interpreter importing torch
def test_shim_twice_and_after_import():
    r = run_py("""
        from atlib.core.compat import import_torchvision, define_missing_schemas, needs_schema_shim
        a = import_torchvision()
        b = import_torchvision()
        assert a is b
        assert not needs_schema_shim()          # torchvision is imported now
        assert define_missing_schemas() == []   # nothing left to define, no double definition
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.slow  # a fresh interpreter importing torch
@needs_cpu_torch
def test_cuda_torch_is_left_untouched():
    """With a CUDA torch the shim must not define the schemas: the import then fails here (CPU torch),
    which is exactly what an unconditional shim would hide."""
    r = run_py("""
        import torch
        torch.version.cuda = "13.0"             # pretend to be a CUDA build
        import atlib.core.compat as compat
        calls = []
        real = compat.define_missing_schemas
        compat.define_missing_schemas = lambda: calls.append(1) or real()
        assert compat.needs_schema_shim() is False
        try:
            compat.import_torchvision()
            imported = True
        except RuntimeError as e:
            imported = False
            assert "torchvision::nms" in str(e), e
        try:
            torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
            schema = True
        except RuntimeError:
            schema = False
        print(calls, imported, schema)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] False False"
