"""The theory of logit shrinkage for linear softmax models, and the experiments that check it.

Pure math first (dual norms, closed-form worst cases, the shifted-logit bound, the optimal scale of a
Gaussian two-class problem), then the linear experiments of chapter 01: Gaussian classes under L2 and
linear softmax models on the flattened pixels of the profile's dataset, trained by the closed-form
worst case and by PGD-AT over an ε sweep. The deep-net parts (flip radius, controls) live in
``atlib.studies.theory.controls``.

Notation: a linear model z = W x + b with W of shape (K, D); a threat model ‖δ‖_p ≤ ε with p in
{"linf", "l2"}; q the dual norm (‖v‖_q = max_{‖δ‖_p ≤ 1} v·δ).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize
from torch import nn

from atlib.core import attacks, stats
from atlib.core.store import artifact_key, code_version_of
from atlib.studies.theory.settings import GaussianSettings, LinearSettings

Tensor = torch.Tensor

# p → q. The mutation check in tests/test_theory.py patches this table and asserts the checks fail.
DUAL_NORM: dict[str, float] = {"linf": 1.0, "l2": 2.0}


# ---------------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------------

def dual_norm(v: Tensor, norm: str) -> Tensor:
    """‖v‖_q over the last dimension, q the dual of the threat model's norm (L∞ → L1, L2 → L2)."""
    if norm not in DUAL_NORM:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(DUAL_NORM)}")
    return v.norm(p=DUAL_NORM[norm], dim=-1)


def pair_differences(W: Tensor, y: Tensor) -> Tensor:
    """(N, K, D): w_y − w_j for every sample and every class j (zero at j = y)."""
    return W[y][:, None, :] - W[None, :, :]


def pairwise_margins(z: Tensor, y: Tensor) -> Tensor:
    """(N, K): z_y − z_j (zero at j = y)."""
    return z.gather(1, y[:, None]) - z


def worst_case_shifts(W: Tensor, x: Tensor, y: Tensor, eps: float, norm: str = "linf", box: bool = True) -> Tensor:
    """(N, K): the exact worst-case drop of each pairwise margin z_y − z_j over ‖δ‖_p ≤ ε.

    Without the box it is ε‖w_y − w_j‖_q. With the [0, 1] box (L∞ only) each coordinate moves against
    the sign of (w_y − w_j)_i by its room r_i = min(ε, x_i) (moving down) or min(ε, 1 − x_i) (up): the
    feasible set is a box with radii r, whose support function is the dual norm of d ⊙ r.
    """
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"bad ε={eps!r}: a finite number >= 0 is needed")
    d = pair_differences(W, y)
    if not box:
        return eps * dual_norm(d, norm)
    if norm != "linf":
        raise ValueError("with the [0, 1] box only L∞ has a closed-form worst case (L2 has none): use box=False")
    down, up = x.clamp(max=eps)[:, None, :], (1 - x).clamp(max=eps)[:, None, :]
    room = torch.where(d > 0, down, up)
    return dual_norm(d * room, "linf")


def shifted_logits(z: Tensor, shifts: Tensor) -> Tensor:
    """z_j + shift_j (shift_y = 0): cross-entropy on these upper-bounds the worst-case cross-entropy."""
    return z + shifts


def worst_margins(z: Tensor, y: Tensor, shifts: Tensor) -> Tensor:
    """(N, K): worst-case pairwise margins, +inf at j = y; a sample is certifiably robust iff all > 0."""
    m = pairwise_margins(z, y) - shifts
    return m.scatter(1, y[:, None], float("inf"))


class PairMargins(nn.Module):
    """Rows (n, j): the logits [z_y − z_j, 0] of a linear model, so that the margin attack loss is
    −(z_y − z_j): PGD on it minimises one pairwise margin per row (rows must stay in one batch)."""

    def __init__(self, D: Tensor, c: Tensor):
        super().__init__()
        self.D, self.c = D, c

    def forward(self, x: Tensor) -> Tensor:
        m = (x.flatten(1) * self.D).sum(1) + self.c
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def pgd_pairwise_margins(W: Tensor, b: Tensor, x: Tensor, y: Tensor, eps: float, norm: str,
                         steps: int = 20) -> Tensor:
    """(N, K): the pairwise margins z_y − z_j that atlib's PGD (sign steps for L∞, normalised steps for
    L2, no random start, clamped to the box) reaches on a linear model; +inf at j = y."""
    N, K = len(y), W.shape[0]
    rows_n = torch.arange(N).repeat_interleave(K)
    rows_j = torch.arange(K).repeat(N)
    keep = rows_j != y[rows_n]
    rows_n, rows_j = rows_n[keep], rows_j[keep]
    D = W[y[rows_n]] - W[rows_j]
    c = b[y[rows_n]] - b[rows_j]
    cfg = attacks.AttackConfig(norm, eps, steps, attacks.madry_step(eps, steps), loss="margin", random_start=False)
    xa = attacks.make_attack(PairMargins(D, c), cfg)(x[rows_n], torch.zeros(len(rows_n), dtype=torch.long))
    out = torch.full((N, K), float("inf"), dtype=W.dtype)
    out[rows_n, rows_j] = (xa.flatten(1) * D).sum(1) + c
    return out


def closed_form_vs_pgd(W: Tensor, b: Tensor, x: Tensor, y: Tensor, eps: float, norm: str, box: bool,
                       steps: int = 20) -> float:
    """Max |closed-form worst pairwise margin − PGD's| over samples and pairs (float64)."""
    W, b, x = W.double(), b.double(), x.double().flatten(1)
    closed = worst_margins(x @ W.T + b, y, worst_case_shifts(W, x, y, eps, norm, box))
    pgd = pgd_pairwise_margins(W, b, x, y, eps, norm, steps)
    finite = torch.isfinite(closed)
    return float((closed[finite] - pgd[finite]).abs().max())


def pgd_ce_loss(W: Tensor, b: Tensor, x: Tensor, y: Tensor, eps: float, steps: int = 50,
                seed: int = 0) -> Tensor:
    """Per-sample cross-entropy of a linear model after L∞ PGD-CE with the box (random start, best iterate)."""
    lin = nn.Linear(W.shape[1], W.shape[0]).to(W.dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    cfg = attacks.AttackConfig.madry("linf", eps, steps)
    xa = attacks.make_attack(lin, cfg)(x, y, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return F.cross_entropy(lin(xa), y, reduction="none")


def bound_check(W: Tensor, b: Tensor, x: Tensor, y: Tensor, eps: float, steps: int = 50) -> dict[str, float]:
    """Shifted-logit CE vs the PGD-attacked CE (L∞ with the box), per sample, in float64.

    ``max_violation`` = max(PGD loss − bound) must be ≤ 0 (up to rounding); ``max_abs_diff`` = max |bound −
    PGD loss| is ~0 in the binary case (the bound is exact there) and positive in the multiclass case.
    """
    W, b, x = W.double(), b.double(), x.double().flatten(1)
    bound = F.cross_entropy(shifted_logits(x @ W.T + b, worst_case_shifts(W, x, y, eps, "linf", True)), y,
                            reduction="none")
    pgd = pgd_ce_loss(W, b, x, y, eps, steps)
    return {"max_violation": float((pgd - bound).max()), "max_abs_diff": float((pgd - bound).abs().max()),
            "mean_gap": float((bound - pgd).mean())}


# ---------------------------------------------------------------------------------------------------
# Gaussian two-class problem under L2: the optimal scale c*(ε)
# ---------------------------------------------------------------------------------------------------

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(120)
_GH_W = _GH_W / _GH_W.sum()  # E_{g~N(0,1)}[f(g)] ≈ Σ w_i f(x_i)


def gaussian_scale_loss(c: float, eps: float, mu_norm: float, sigma: float) -> float:
    """Population adversarial logistic loss of w = c·μ/‖μ‖: E softplus(−c(‖μ‖ − ε + σg)), g ~ N(0, 1).

    For isotropic classes the loss depends on w only through w·μ and ‖w‖ (it is decreasing in w·μ), so
    the direction μ/‖μ‖ is optimal and the problem is one-dimensional in the scale c = ‖w‖.
    """
    s = -c * (mu_norm - eps + sigma * _GH_X)
    return float(np.sum(_GH_W * np.logaddexp(0.0, s)))


def optimal_scale(eps: float, mu_norm: float = 1.0, sigma: float = 0.75, c_max: float = 1e3) -> float:
    """c*(ε) = argmin_c ≥ 0 of ``gaussian_scale_loss`` (0 once ε ≥ ‖μ‖: no direction beats chance)."""
    if eps >= mu_norm:
        return 0.0
    res = optimize.minimize_scalar(gaussian_scale_loss, bounds=(0.0, c_max), args=(eps, mu_norm, sigma),
                                   method="bounded", options={"xatol": 1e-8})
    return float(res.x)


def gaussian_predictions(c: float, mu_norm: float, sigma: float) -> dict[str, float]:
    """Population statistics of the centred binary logits (−s/2, s/2), s = c·u·x, y = +1 side (symmetric)."""
    mean, sd = c * mu_norm, c * sigma
    folded = sd * math.sqrt(2 / math.pi) * math.exp(-mean ** 2 / (2 * sd ** 2)) + mean * math.erf(
        mean / (sd * math.sqrt(2))) if sd > 0 else abs(mean)
    return {"scale": c, "mean_margin": mean, "mean_logit_gap": folded, "mean_max_logit": folded / 2}


def gaussian_sample(n: int, st: GaussianSettings, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """n points, labels ±1 equally likely, x = y·μ + σ·noise with μ = ‖μ‖·e_1 (float64)."""
    y = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    x = torch.randn(n, st.dim, generator=gen, dtype=torch.float64) * st.sigma
    x[:, 0] += y * st.mu_norm
    return x, y


def train_gaussian(x: Tensor, y: Tensor, eps: float | Sequence[float], st: GaussianSettings, seed: int) -> Tensor:
    """w trained by full-batch gradient descent (momentum 0.9) on mean softplus(−(y w·x − ε‖w‖₂)).

    In the binary case this adversarial logistic loss is the exact L2 worst case (no box). A sequence of
    ε trains one w per ε at once (rows of the result), each from the same start: the summed loss has
    independent rows, so every row follows its own descent, in one batched step instead of len(ε)."""
    eps_t = torch.as_tensor(eps, dtype=torch.float64)
    w0 = torch.randn(st.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.01
    w = w0.expand(*eps_t.shape, st.dim).clone().requires_grad_(True)  # (E, dim), or (dim,) for one ε
    opt = torch.optim.SGD([w], lr=st.lr, momentum=0.9)
    for _ in range(st.steps):
        margin = y[:, None] * (x @ w.T) if w.ndim == 2 else y * (x @ w)
        loss = F.softplus(-(margin - eps_t * dual_norm(w, "l2"))).mean(0).sum()  # per-ε means, summed
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def gaussian_experiment(st: GaussianSettings, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Predicted vs trained scale, margin, gap and max logit for every ε of the sweep and every seed."""
    trained: dict[float, list[dict]] = {eps: [] for eps in st.eps_sweep}
    for seed in seeds:
        gen = torch.Generator().manual_seed(10_000 + seed)
        xtr, ytr = gaussian_sample(st.n_train, st, gen)
        xte, yte = gaussian_sample(st.n_test, st, gen)
        W = train_gaussian(xtr, ytr, st.eps_sweep, st, seed)  # every ε of the sweep in one batched descent
        for eps, w in zip(st.eps_sweep, W):
            s = xte @ w
            z = torch.stack([-s / 2, s / 2], dim=1)
            summ = stats.logit_summary(z, (yte > 0).long())
            trained[eps].append({"scale": float(w.norm()), "cos_to_mu": float(w[0] / w.norm().clamp_min(1e-12)),
                                 "mean_margin": float((yte * s).mean()), "mean_logit_gap": summ["mean_logit_gap"],
                                 "mean_max_logit": summ["mean_max_logit"],
                                 "mean_centred_max_logit": summ["mean_centred_max_logit"],
                                 "weight_norm": float(w.norm()), "clean_acc": summ["accuracy"]})
    rows = [{"eps": eps, "predicted": gaussian_predictions(optimal_scale(eps, st.mu_norm, st.sigma), st.mu_norm,
                                                           st.sigma), "trained": trained[eps]}
            for eps in st.eps_sweep]
    return {"settings": st, "rows": rows}


# ---------------------------------------------------------------------------------------------------
# Linear softmax models on the profile's dataset
# ---------------------------------------------------------------------------------------------------

def closed_form_loss(lin: nn.Linear, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Mean CE on the shifted logits of the L∞-with-box worst case (exact per pair; an upper bound on
    the multiclass worst-case CE)."""
    z = lin(x)
    if eps == 0:
        return F.cross_entropy(z, y)
    return F.cross_entropy(shifted_logits(z, worst_case_shifts(lin.weight, x, y, eps, "linf", True)), y)


def train_linear(x: Tensor, y: Tensor, num_classes: int, eps: float, method: str, st: LinearSettings,
                 seed: int) -> nn.Linear:
    """A linear softmax model on flattened pixels in [0, 1], trained by ``method`` ∈ {"closed_form", "pgd"}
    with SGD (momentum 0.9, weight decay, linear lr decay to 0)."""
    if method not in ("closed_form", "pgd"):
        raise ValueError(f"unknown training method {method!r}; valid: closed_form, pgd")
    torch.manual_seed(seed)
    x = x.flatten(1)
    lin = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.SGD(lin.parameters(), lr=st.lr, momentum=0.9, weight_decay=st.weight_decay)
    steps = st.epochs * math.ceil(len(y) / st.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    gen = torch.Generator().manual_seed(seed)
    atk = None
    if method == "pgd" and eps > 0:
        atk = attacks.make_attack(lin, attacks.AttackConfig.madry("linf", eps, st.pgd_steps, keep_best=False))
    for _ in range(st.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), st.batch_size):
            idx = perm[i:i + st.batch_size]
            xb, yb = x[idx], y[idx]
            if atk is not None:
                loss = F.cross_entropy(lin(atk(xb, yb, gen)), yb)
            else:
                loss = closed_form_loss(lin, xb, yb, eps if method == "closed_form" else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return lin.eval()


def linear_record(lin: nn.Linear, x: Tensor, y: Tensor, eps: float) -> dict[str, Any]:
    """Clean logits and their statistics on the evaluation set, the weight norm, and the exact
    (closed-form) robust accuracy under L∞ ε with the box."""
    x = x.flatten(1)
    with torch.no_grad():
        z = lin(x)
        W = lin.weight.detach()
        robust = torch.ones(len(y), dtype=torch.bool)
        for i in range(0, len(y), 250):  # chunks: (N, K, D) would be large for 784 pixels
            sl = slice(i, i + 250)
            wm = worst_margins(z[sl], y[sl], worst_case_shifts(W, x[sl], y[sl], eps, "linf", True))
            robust[sl] = wm.min(1).values > 0
    summ = stats.logit_summary(z, y)
    return {"logits": z.float(), "weight": W.detach().clone(), "bias": lin.bias.detach().clone(),
            "weight_norm": float(W.norm()), "clean_acc": summ["accuracy"],
            "exact_robust_acc": float(robust.float().mean()),
            **{k: v for k, v in summ.items() if k != "accuracy"}}


def linear_experiment(x_train: Tensor, y_train: Tensor, x_eval: Tensor, y_eval: Tensor, num_classes: int,
                      st: LinearSettings, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Every (method, ε, seed): a trained linear model and its record (payload safe for weights_only)."""
    x_train, y_train = x_train[:st.n_train].flatten(1).cpu(), y_train[:st.n_train].cpu()
    x_eval, y_eval = x_eval.flatten(1).cpu(), y_eval.cpu()
    out: dict[str, Any] = {"eps": list(st.eps_sweep), "seeds": list(seeds), "closed_form": [], "pgd": []}
    for method in ("closed_form", "pgd"):
        for i, eps in enumerate(st.eps_sweep):
            if eps == 0 and method == "pgd":  # at ε = 0 both methods are plain CE with the same seed: reuse
                out[method].append(out["closed_form"][i])
                continue
            out[method].append([linear_record(train_linear(x_train, y_train, num_classes, eps, method, st, s),
                                              x_eval, y_eval, eps) for s in seeds])
    return out


def cached_linear_experiment(ctx: Any, st: LinearSettings | None = None) -> dict[str, Any]:
    """``linear_experiment`` on the profile's data, through the artifact store."""
    st = st or ctx.profile.theory.linear
    cfg = {"settings": st, "seeds": list(ctx.profile.side_seed_list), "eval_subset": ctx.profile.eval_subset,
           "dataset": ctx.profile.dataset, "train_subset": ctx.profile.train_subset}
    # this module and its closure (attacks, stats): the whole linear experiment is defined here
    key = artifact_key("theory-linear", cfg, code_version_of(__name__), ctx.data.fingerprint)
    payload, _ = ctx.store.get_or_compute(key, lambda: linear_experiment(
        ctx.data.train_x, ctx.data.train_y, ctx.eval_x, ctx.eval_y, ctx.data.num_classes, st, ctx.profile.side_seed_list),
        meta=cfg)
    return payload


def cached_gaussian_experiment(ctx: Any, st: GaussianSettings, seeds: tuple[int, ...]) -> dict[str, Any]:
    """:func:`gaussian_experiment` through the artifact store (it needs no data: the key is its settings and seeds)."""
    cfg = {"settings": st, "seeds": list(seeds)}
    key = artifact_key("theory-gaussian", cfg, code_version_of(__name__), "")
    payload, _ = ctx.store.get_or_compute(key, lambda: {"rows": gaussian_experiment(st, seeds)["rows"]}, meta=cfg)
    return {"settings": st, "rows": payload["rows"]}


def linear_job(ctx: Any) -> None:
    """A pool job (chapter 01's planner): the linear experiment into the store."""
    cached_linear_experiment(ctx)


STAT_NAMES = ("mean_max_logit", "mean_centred_max_logit", "mean_logit_gap", "mean_margin_correct", "weight_norm",
              "clean_acc", "exact_robust_acc")


def linear_series(lin: dict[str, Any], method: str) -> dict[str, list[stats.Interval]]:
    """Per statistic, one t-interval over seeds per ε."""
    return {k: [stats.mean_ci([r[k] for r in recs]) for recs in lin[method]] for k in STAT_NAMES}


def trend(values: list[float]) -> str:
    """"falls" / "rises" if monotone (non-strictly) across the sweep with a net change, else "not monotone"."""
    d = np.diff(values)
    if np.all(d <= 0) and values[-1] < values[0]:
        return "falls monotonically"
    if np.all(d >= 0) and values[-1] > values[0]:
        return "rises monotonically"
    return "is not monotone"
