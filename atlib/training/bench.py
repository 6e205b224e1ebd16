"""``python -m atlib bench``: atlib's PGD adversarial-training epoch against a plain reference loop.

Both run in one process on the same model, the same synthetic CIFAR-shaped data (uniform random
pixels, 3x32x32, 10 classes), the same batch size and the same PGD settings:

(a) atlib: :func:`atlib.training.train.train` with a PGD :class:`~atlib.core.attacks.AttackConfig`, data resident on
    the device, input-only attack gradients, no host syncs inside the attack, and (``fast``, CUDA only)
    bf16 autocast, channels_last, fused SGD and ``torch.compile`` (off with ``$ATLIB_COMPILE=0``);
(b) reference: the loop written the obvious way: float32, a ``DataLoader`` over CPU tensors with a
    per-batch ``.to(device)``, ``loss.backward()`` on the perturbation at every attack step (weight
    gradients accumulated, then zeroed), no compile, channels_last or bf16. It keeps PyTorch's default
    math settings (which allow TF32 convolutions on recent GPUs).

Each is warmed up, then timed ``repeats`` times (synchronising CUDA before reading the clock); the
median counts. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one eager AT step
of atlib (attack forward+backward passes, then the update's forward+backward), not by hand; the
matmul peak is measured in the same run (float32 on CPU, bf16 on CUDA), and the compute floor of an epoch
(its FLOPs at that peak: no PGD-AT epoch can be faster) is recomputed with it.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from atlib.core.attacks import AttackConfig, make_attack
from atlib.core.models import build_model
from atlib.core.runtime import device_name, pick_device
from atlib.training.train import TrainConfig, train

MODELS = {"small_cnn": "small_cnn", "resnet18": "preact_resnet18"}
SHAPE = (3, 32, 32)
EPOCH_IMAGES = 50_000  # "seconds per epoch" is quoted for a CIFAR-10-sized training set
EPS = 8 / 255
LR = 0.1


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark: model, batch size, PGD steps, synthetic set size, repeats, device."""

    model: str = "small_cnn"
    batch_size: int = 256
    steps: int = 10
    n_images: int = 2048
    repeats: int = 3
    device: str | None = None
    fast: bool = True  # atlib's CUDA-only speed-ups (train(fast=True)); no effect on the CPU
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown bench model {self.model!r}; valid: {', '.join(MODELS)}")
        if min(self.batch_size, self.n_images, self.repeats, self.threads or 1) < 1 or self.steps < 0:
            raise ValueError(f"bad bench config: {self}")

    @property
    def attack(self) -> AttackConfig:
        """The training attack as the profiles train: last iterate (keep_best is for evaluation)."""
        return AttackConfig.madry("linf", EPS, self.steps, keep_best=False)


def synthetic_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random CIFAR-shaped images in [0, 1] (not zeros: no data-dependent shortcuts) and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPE), generator=g), torch.randint(0, 10, (n,), generator=g)


def make_model(name: str, seed: int = 0) -> nn.Module:
    """The benchmarked network, initialised from ``seed``."""
    torch.manual_seed(seed)
    return build_model(MODELS[name], SHAPE, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The same optimiser settings as atlib's TrainConfig defaults."""
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4, nesterov=True)


def reference_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: BenchConfig,
                    dev: torch.device) -> None:
    """One PGD-AT epoch written the plain way (see the module docstring); ``x``, ``y`` live on the CPU."""
    opt = _sgd(model)
    atk = cfg.attack
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True)
    for xb, yb in loader:
        xb, yb = xb.to(dev), yb.to(dev)
        model.eval()
        delta = (torch.rand_like(xb) * 2 - 1) * atk.eps
        delta = (xb + delta).clamp(0, 1) - xb
        for _ in range(atk.steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(xb + delta), yb)
            loss.backward()  # also fills the weights' .grad, zeroed below
            delta = (delta.detach() + atk.step_size * delta.grad.sign()).clamp(-atk.eps, atk.eps)
            delta = (xb + delta).clamp(0, 1) - xb
            model.zero_grad()
        model.train()
        loss = F.cross_entropy(model(xb + delta.detach()), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def atlib_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: BenchConfig) -> None:
    """One epoch of atlib's PGD-AT on device-resident ``x``, ``y``."""
    train(model, x, y, TrainConfig(1, cfg.batch_size, LR, attack=cfg.attack), seed=0, progress=False, fast=cfg.fast)


def at_step_flops(model_name: str, batch_size: int, steps: int, dev: torch.device) -> int:
    """FLOPs of one eager atlib AT step on a batch (PGD forward+backward passes, then the update)."""
    model = make_model(model_name).to(dev)
    x, y = synthetic_data(batch_size, seed=1)
    x, y = x.to(dev), y.to(dev)
    attack = make_attack(model, AttackConfig.madry("linf", EPS, steps, keep_best=False))
    opt = _sgd(model)
    with FlopCounterMode(display=False) as counter:
        xa = attack(x, y, torch.Generator(device=dev).manual_seed(0))
        model.train()
        loss = F.cross_entropy(model(xa), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return int(counter.get_total_flops())


def matmul_peak(dev: torch.device, repeats: int = 5) -> tuple[float, str]:
    """Best measured FLOP/s of a large square matmul on ``dev`` (bf16 on CUDA, float32 on CPU), and its dtype."""
    dtype, n = (torch.bfloat16, 8192) if dev.type == "cuda" else (torch.float32, 1024)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b  # warm-up (kernel selection, allocation)
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best, str(dtype).removeprefix("torch.")


def _time_interleaved(fns: dict[str, Callable[[], None]], dev: torch.device, repeats: int) -> dict[str, float]:
    """Median wall seconds of each ``fn`` over ``repeats`` rounds, after one warm-up run of each.

    Rounds interleave the functions, so a load that comes and goes (a shared machine) hits them alike.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_bench(cfg: BenchConfig) -> dict:
    """Time both loops and return the measurements (see the module docstring)."""
    dev = pick_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    x, y = synthetic_data(cfg.n_images)
    xd, yd = x.to(dev), y.to(dev)
    base = make_model(cfg.model)
    ours, ref = copy.deepcopy(base).to(dev), copy.deepcopy(base).to(dev)
    secs = _time_interleaved({"atlib": lambda: atlib_epoch(ours, xd, yd, cfg),
                              "reference": lambda: reference_epoch(ref, x, y, cfg, dev)}, dev, cfg.repeats)
    sec_b = secs["reference"]
    flops_img = at_step_flops(cfg.model, cfg.batch_size, cfg.steps, dev) / cfg.batch_size
    peak, peak_dtype = matmul_peak(dev)
    floor_s = flops_img * EPOCH_IMAGES / peak
    fast = cfg.fast and dev.type == "cuda"
    compiled = fast and os.environ.get("ATLIB_COMPILE", "1") != "0"
    out: dict = {"config": asdict(cfg), "device": device_name(dev), "torch": torch.__version__,
                 "atlib_path": ("bf16 autocast, channels_last, fused SGD" + (", torch.compile" if compiled else "")
                                if fast else "float32, eager"),
                 "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "params_atlib": sum(p.numel() for p in ours.parameters()),
                 "params_reference": sum(p.numel() for p in ref.parameters()),
                 "flops_per_image": flops_img, "matmul_peak_tflops": peak / 1e12, "matmul_peak_dtype": peak_dtype,
                 "floor_s_per_50k": floor_s, "rows": {}}
    for key, sec in secs.items():
        ips = cfg.n_images / sec
        epoch_s = EPOCH_IMAGES / ips
        out["rows"][key] = {"images_per_s": ips, "s_per_50k_epoch": epoch_s, "speedup_vs_reference": sec_b / sec,
                            "achieved_tflops": flops_img * ips / 1e12, "fraction_of_peak": flops_img * ips / peak,
                            "times_floor": epoch_s / floor_s}
    return out


def format_table(res: dict) -> str:
    """The measurements as a plain-text table."""
    c = res["config"]
    head = (f"PGD-{c['steps']} L∞ AT, {c['model']}, batch {c['batch_size']}, {c['n_images']} synthetic 3x32x32 "
            f"images, median of {c['repeats']}, {res['device']}, {res['time_utc']}\n"
            f"FLOPs/image (FlopCounterMode, one eager AT step): {res['flops_per_image'] / 1e9:.3f} G; matmul peak "
            f"({res['matmul_peak_dtype']}): {res['matmul_peak_tflops']:.3f} TFLOP/s; floor: "
            f"{res['floor_s_per_50k']:.2f} s per 50k epoch; atlib path: {res['atlib_path']}; torch {res['torch']}\n")
    cols = f"{'loop':<10} {'img/s':>10} {'s/50k ep':>10} {'speed-up':>9} {'TFLOP/s':>9} {'of peak':>8} {'×floor':>8}"
    lines = [head + cols]
    for key, r in res["rows"].items():
        lines.append(f"{key:<10} {r['images_per_s']:>10.1f} {r['s_per_50k_epoch']:>10.1f} "
                     f"{r['speedup_vs_reference']:>8.2f}× {r['achieved_tflops']:>9.4f} "
                     f"{r['fraction_of_peak']:>8.1%} {r['times_floor']:>8.1f}")
    lines.append("of peak = achieved FLOP/s over the measured matmul peak = floor / epoch time (floor: the epoch's "
                 "FLOPs at that peak)")
    lines.append("reference: float32, DataLoader + per-batch copies, loss.backward() per attack step, PyTorch's "
                 "default math settings (TF32 convolutions allowed on recent GPUs)")
    return "\n".join(lines)


def main(cfg: BenchConfig, json_path: str | None = None) -> dict:
    """Run, print the table, and write the JSON if asked."""
    res = run_bench(cfg)
    print(format_table(res))
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
    return res
