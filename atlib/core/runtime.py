"""Device choice, seeding and training precision: CUDA when present, CPU otherwise."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


class DeviceError(ValueError):
    """A device that cannot be used here (malformed, or CUDA where there is none); the message says what to do."""


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``cpu``, ``cuda``, ``cuda:1``), else ``$ATLIB_DEVICE``, else CUDA if available
    (under ``torchrun``: ``cuda:$LOCAL_RANK``), else the CPU. A device that cannot be used raises DeviceError."""
    if name:
        return _named_device(name, "--device")
    if os.environ.get("ATLIB_DEVICE"):
        return _named_device(os.environ["ATLIB_DEVICE"], "$ATLIB_DEVICE")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one GPU per local rank
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def _named_device(name: str, via: str) -> torch.device:
    """The device ``name`` (given by ``via``: --device or $ATLIB_DEVICE), if it is a CPU or an available GPU."""
    arg = via == "--device"
    what = f"device {name!r}" if arg else f"{via}={name!r}"
    omit = f"{'leave out' if arg else 'unset'} {via} (CUDA when present, else the CPU)"
    pass_ = "pass" if arg else "set it to"
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"{what} is not a device atlib runs on: {pass_} cpu, cuda or cuda:N (N: the GPU's "
                          f"index), or {omit}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{what} asks for a GPU, but CUDA is not available on this machine (torch "
                          f"{torch.__version__}): {omit}, or {pass_} cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"{what}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0: "
                          f"{omit}, or {pass_} cuda:0")
    return dev


def rank_world() -> tuple[int, int]:
    """(rank, world size) in an initialised ``torch.distributed`` process group (``torchrun``); (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def strict_determinism(on: bool | None = None) -> bool:
    """Opt in to bitwise-reproducible CUDA runs (``on``, else ``$ATLIB_DETERMINISTIC=1``); returns the state.

    CPU runs are already bitwise reproducible for a fixed seed and thread count (jobs in worker processes,
    :mod:`atlib.training.pool`, run on one thread each). On CUDA, cuDNN's
    autotuned convolution algorithms and atomics-based kernels (e.g. scatter-add in backward passes)
    vary from run to run; this switches to deterministic kernels (slower, and an op that has none
    raises an error naming it) and sets the cuBLAS workspace that deterministic matmuls need.
    """
    on = os.environ.get("ATLIB_DETERMINISTIC", "0") == "1" if on is None else on
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must be set before the first cuBLAS call
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on  # autotuning picks algorithms by timing: not reproducible
    torch.backends.cudnn.deterministic = on
    return on


def device_name(dev: torch.device) -> str:
    """Human-readable device, e.g. ``cpu (2 threads)`` or ``cuda: NVIDIA H100``."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"


PRECISIONS = ("fp32", "bf16")  # training precision: float32, or bf16 autocast for the training steps


def check_precision(requested: str) -> str:
    """``requested`` if it is one of :data:`PRECISIONS`, else ValueError saying what is accepted."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision = {requested!r}: one of {', '.join(map(repr, PRECISIONS))} (fp32: float32 "
                         f"throughout; bf16: bf16 autocast for training where the device has native bf16)")
    return requested


def native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` computes bf16 natively: a GPU that supports it, a CPU with AVX512-BF16 or AMX tiles (without
    them bf16 is emulated, slower than float32). ``$ATLIB_CPU_BF16=0`` says no for the CPU (tests of the fallback)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if os.environ.get("ATLIB_CPU_BF16", "1") == "0":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private: absent → no
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def train_precision(requested: str, dev: torch.device, fast: bool = False) -> str:
    """The precision training runs at on ``dev``: "bf16" when ``requested`` and the device has native bf16, or on
    CUDA when ``fast`` (atlib's CUDA fast path trains under bf16 autocast); "fp32" otherwise. Every trained
    artifact's cache key holds this resolved value, never the request."""
    check_precision(requested)
    if fast and dev.type == "cuda":
        return "bf16"
    return "bf16" if requested == "bf16" and native_bf16(dev) else "fp32"


def precision_text(requested: str, resolved: str, device: str) -> str:
    """How a book says which precision trained its models: the resolved one, and why when it is not the request
    (``device``: as :func:`device_name` or the runner write it, starting ``cuda`` for a GPU)."""
    if resolved == requested:
        return resolved
    chip = "GPU" if device.startswith("cuda") else "CPU"
    if resolved == "fp32":
        return f"{requested} requested; this {chip} has no native bf16: fp32"
    return f"bf16 (the profile's CUDA fast path; {requested} requested)"


def progress_default() -> bool:
    """Show tqdm bars unless ``$ATLIB_PROGRESS=0`` (the book runner sets it: bars are noise in HTML)."""
    return os.environ.get("ATLIB_PROGRESS", "1") != "0"
