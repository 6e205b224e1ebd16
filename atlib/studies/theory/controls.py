"""Deep nets in the light of the linear theory (chapter 01): first-order flip radius vs bisection, and
the shrinkage controls (label smoothing, logit squeezing, loss temperature).

Chapter 02's standard and AT models are obtained through ``shrinkage.model_run`` (never retrained
here). The controls are standard models of the same architecture, data subset, schedule and seeds,
trained with one extra regulariser each and cached through the artifact store.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

from atlib.core import attacks, stats
from atlib.core.keys import code_version_without
from atlib.core.store import artifact_key
from atlib.studies import context as cx
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.shrinkage import runs as shrinkage
from atlib.studies.theory import runs as theory
from atlib.studies.theory.settings import DeepSettings
from atlib.training import evaluate, schedule, train

Tensor = torch.Tensor
KINDS = ("label_smoothing", "logit_squeeze", "loss_temperature")
KIND_LABELS = {"label_smoothing": "label smoothing α", "logit_squeeze": "logit squeezing λ",
               "loss_temperature": "loss temperature T"}


def _code() -> str:
    """This module's import closure but the loaders (the linear theory, chapter 02's runs, train, evaluate, attacks): every
    artifact here is computed by this module's functions; the models' own code also enters via ``shrinkage.CODE``."""
    return code_version_without(__name__)


# ---------------------------------------------------------------------------------------------------
# First-order flip radius vs bisection
# ---------------------------------------------------------------------------------------------------

def first_order_radius(model: nn.Module, x: Tensor, y: Tensor, norm: str = "linf") -> tuple[Tensor, Tensor]:
    """(margin, predicted flip radius margin / ‖∇ₓ margin‖_q), the gradient taken at x (eval mode)."""
    model.eval()
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        m = stats.margin(model(xr), y)
        (g,) = torch.autograd.grad(m.sum(), xr)
    return m.detach(), m.detach() / theory.dual_norm(g.flatten(1), norm).clamp_min(1e-12)


def pgd_linf_per_sample(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, steps: int,
                        generator: torch.Generator | None = None, random_start: bool = True,
                        loss: str = "margin") -> tuple[Tensor, Tensor]:
    """atlib's L∞ PGD (sign steps of 2.5·ε/steps, projection, [0, 1] clamp) with one ε per sample.

    Returns (last iterate, flipped) where ``flipped`` marks samples misclassified at any iterate."""
    model.eval()
    e = eps.view(-1, *([1] * (x.ndim - 1))).to(device=x.device, dtype=x.dtype)
    step = attacks.madry_step(e, steps)
    delta = ((2 * torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) - 1) * e if random_start
             else torch.zeros_like(x))
    delta = (x + delta).clamp(0, 1) - x
    flipped = torch.zeros(len(y), dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            z = model(x + delta)
            (g,) = torch.autograd.grad(attacks.attack_loss(z, y, loss).sum(), delta)
        flipped |= (z.detach().argmax(1) != y).cpu()
        with torch.no_grad():
            delta = torch.max(torch.min(delta + step * g.sign(), e), -e)
            delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        flipped |= (model(x + delta).argmax(1) != y).cpu()
    return (x + delta).detach(), flipped


def bisection_radius(model: nn.Module, x: Tensor, y: Tensor, st: DeepSettings, seed: int) -> tuple[Tensor, Tensor]:
    """(smallest ε found at which PGD flips each sample, censored) by bisection on [0, ε_max]."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.zeros(len(y), dtype=x.dtype)
    hi = torch.full((len(y),), st.eps_max, dtype=x.dtype)
    _, f = pgd_linf_per_sample(model, x, y, hi, st.flip_steps, gen)
    censored = ~f
    for _ in range(st.bisect_iters):
        mid = (lo + hi) / 2
        _, f = pgd_linf_per_sample(model, x, y, mid, st.flip_steps, gen)
        hi, lo = torch.where(f, mid, hi), torch.where(f, lo, mid)
    return hi, censored


def flip_radius(ctx: cx.Context, spec: ModelSpec, seed: int, st: DeepSettings | None = None) -> dict[str, Any]:
    """Predicted vs bisection flip radius (L∞) on the first ``n_flip`` correctly classified evaluation
    samples of chapter 02's model ``spec``/``seed``, cached."""
    st = st or ctx.profile.theory.deep
    cfg = {"model": shrinkage.run_config(ctx, spec, seed), "model_code": shrinkage.CODE, "settings": st}
    key = artifact_key("theory-flip", cfg, _code(), ctx.data.fingerprint)

    def compute() -> dict[str, Any]:
        run = shrinkage.model_run(ctx, spec, seed)
        correct = (run.logits["clean"].argmax(1) == run.labels).nonzero().squeeze(1)[:st.n_flip]
        x, y = ctx.eval_x[correct.to(ctx.device)], ctx.eval_y[correct.to(ctx.device)]
        t0 = time.perf_counter()
        margin, pred = first_order_radius(run.model, x, y)
        true, censored = bisection_radius(run.model, x, y, st, seed)
        return {"index": correct, "margin": margin.cpu(), "predicted": pred.cpu(), "bisection": true.cpu(),
                "censored": censored.cpu(), "seconds": time.perf_counter() - t0}

    payload, _ = ctx.store.get_or_compute(key, compute, meta=cfg)
    return payload


def flip_summary(res: dict[str, Any]) -> dict[str, float]:
    """Spearman ρ (censored samples at ε_max), median ratio bisection / predicted, censored fraction."""
    p, t = res["predicted"].double().numpy(), res["bisection"].double().numpy()
    rho = float(sps.spearmanr(p, t).statistic) if len(p) > 2 else float("nan")
    return {"spearman": rho, "median_ratio": float(np.median(t / np.maximum(p, 1e-12))),
            "median_predicted": float(np.median(p)), "median_bisection": float(np.median(t)),
            "censored_frac": float(res["censored"].float().mean()), "n": int(len(p))}


# ---------------------------------------------------------------------------------------------------
# Controls: label smoothing, logit squeezing, loss temperature
# ---------------------------------------------------------------------------------------------------

def control_config(ctx: cx.Context, kind: str, strength: float) -> train.TrainConfig:
    """The profile's standard training config with one regulariser switched on."""
    if kind not in KINDS:
        raise ValueError(f"unknown control {kind!r}; valid: {', '.join(KINDS)}")
    return dataclasses.replace(ctx.profile.train_config(ModelSpec("standard")), **{kind: float(strength)})


def control_model(ctx: cx.Context, kind: str, strength: float, seed: int,
                  n_calib: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or load) one control model; the payload holds clean logits on the calibration images
    (the first ``n_calib`` training images) and on the evaluation subset."""
    n_calib = n_calib or ctx.profile.theory.deep.n_calib
    tcfg = control_config(ctx, kind, strength)
    cfg = {"run": shrinkage.run_config(ctx, ModelSpec("standard"), seed) | {"train": tcfg},
           "n_calib": n_calib, "model_code": shrinkage.CODE}
    key = artifact_key("theory-control", cfg, _code(), ctx.data.fingerprint)
    model = shrinkage.build(ctx, seed)

    def compute() -> dict[str, Any]:
        t0 = time.perf_counter()
        train.train(model, ctx.data.train_x, ctx.data.train_y, tcfg, seed, name=f"{kind}={strength} seed {seed}",
                    progress=False, precision=cfg["run"]["precision"])  # run_config's: in the key
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "calib_logits": train.predict(model, ctx.data.train_x[:n_calib]),
                "clean_logits": train.predict(model, ctx.eval_x), "train_seconds": time.perf_counter() - t0}

    payload, hit = ctx.store.get_or_compute(key, compute, meta=cfg)
    if hit:
        model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def linf_attacks(ctx: cx.Context) -> dict[str, Any]:
    """Chapter 02's L∞ evaluation attacks (PGD CE and margin at the profile's ε)."""
    return {k: v for k, v in ctx.profile.eval_attacks().items() if k.startswith("linf")}


def control_eval(ctx: cx.Context, kind: str, strength: float, seed: int) -> dict[str, Tensor]:
    """Clean and attacked logits of a control model on the evaluation subset, cached."""
    model, payload = control_model(ctx, kind, strength, seed)
    cfg = {"run": shrinkage.run_config(ctx, ModelSpec("standard"), seed) | {"train": control_config(ctx, kind, strength)},
           "attacks": linf_attacks(ctx), "model_code": shrinkage.CODE}
    key = artifact_key("theory-control-eval", cfg, _code(), ctx.data.fingerprint)
    out, _ = ctx.store.get_or_compute(key, lambda: evaluate.evaluate(model, ctx.eval_x, ctx.eval_y, linf_attacks(ctx),
                                                                      seed), meta=cfg)
    return out


def calibration_target(ctx: cx.Context) -> tuple[float, float]:
    """The mean clean logit gap of chapter 02's main AT model (first seed) on the calibration images (the first
    ``n_calib`` training images), which the controls are matched to, and the standard model's there."""
    p = ctx.profile
    xcal = ctx.data.train_x[:p.theory.deep.n_calib]
    at0, std0 = shrinkage.model_run(ctx, p.main_at, p.seeds[0]), shrinkage.model_run(ctx, ModelSpec("standard"), p.seeds[0])
    return (float(stats.logit_gap(train.predict(at0.model, xcal)).mean()),
            float(stats.logit_gap(train.predict(std0.model, xcal)).mean()))


def calibrate(ctx: cx.Context, target_gap: float, seed: int) -> dict[str, dict[str, Any]]:
    """Per control: the grid strength whose mean clean logit gap on the calibration images (seed
    ``seed``) is closest to ``target_gap`` (whether it is close enough is the rule's: ``rules.judge_calibration``).
    Robustness plays no part in the choice."""
    st = ctx.profile.theory.deep
    cx.fill(ctx, [(control_model, (kind, s, seed)) for kind in KINDS for s in st.grid(kind)], "controls")
    out = {}
    for kind in KINDS:
        gaps = {s: float(stats.logit_gap(control_model(ctx, kind, s, seed)[1]["calib_logits"]).mean())
                for s in st.grid(kind)}
        chosen = min(gaps, key=lambda s: abs(gaps[s] - target_gap))
        out[kind] = {"grid": list(gaps), "calib_gap": list(gaps.values()), "chosen": chosen, "chosen_gap": gaps[chosen]}
    return out


def control_evals(ctx: cx.Context, cal: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Tensor]]]:
    """Per control: :func:`control_eval` of its calibrated strength at every seed of the profile."""
    jobs = {kind: [(kind, c["chosen"], s) for s in ctx.profile.side_seed_list] for kind, c in cal.items()}
    cx.fill(ctx, [(control_eval, j) for js in jobs.values() for j in js], "controls",  # each trains a standard-size model
            order=lambda job: (schedule.BULK, -shrinkage.cost(ctx, ModelSpec("standard"))))
    return {kind: [control_eval(ctx, *j) for j in js] for kind, js in jobs.items()}


def robust_acc(logits: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """Accuracy under each L∞ attack and under the stronger of the two per sample ("worst")."""
    y = y.cpu()
    ok = {k: v.argmax(1) == y for k, v in logits.items()}
    return {"clean": float(ok["clean"].float().mean()), "pgd_ce": float(ok["linf_ce"].float().mean()),
            "pgd_margin": float(ok["linf_margin"].float().mean()),
            "worst": float((ok["linf_ce"] & ok["linf_margin"]).float().mean())}


def control_row(logits: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """One model's row of the controls table: clean logit statistics and accuracy under the L∞ attacks."""
    return stats.logit_summary(logits["clean"]) | robust_acc({k: logits[k] for k in ("clean", "linf_ce", "linf_margin")}, y)


def control_rows(ctx: cx.Context, deep: dict[str, list[Any]], cal: dict[str, dict[str, Any]]) -> dict[str, list[dict]]:
    """Per model (chapter 02's standard and main AT models in ``deep``, then each calibrated control): its per-seed
    rows (:func:`control_row`), seeds in the profile's order."""
    rows = {label: [control_row(r.logits, r.labels) for r in runs] for label, runs in deep.items()}
    for kind, per_seed in control_evals(ctx, cal).items():
        rows[f"{KIND_LABELS[kind]} = {cal[kind]['chosen']:g}"] = [control_row(z, ctx.eval_y) for z in per_seed]
    return rows


# ---------------------------------------------------------------------------------------------------
# The chapter's jobs, for a job session (python -m atlib compute: every chapter at once)
# ---------------------------------------------------------------------------------------------------

def flip_job(ctx: cx.Context, spec: ModelSpec, seed: int) -> None:
    flip_radius(ctx, spec, seed)


def precompute(ctx: cx.Context) -> None:
    """Chapter 01's jobs: the controls' calibration grid (no model needed), chapter 02's standard and main AT models
    (waited for), then the flip radii of their side seeds and the calibrated controls at every side seed."""
    p, st = ctx.profile, ctx.profile.theory.deep
    cx.fill(ctx, [(control_model, (kind, s, p.seeds[0])) for kind in KINDS for s in st.grid(kind)]
            + [(theory.linear_job, ()), (theory.cached_gaussian_experiment, (p.theory.gaussian, p.side_seed_list))],
            "controls, linear models, Gaussian model", order=lambda job: (schedule.STEP, 0.0))
    deep = [r for r in shrinkage.training_runs(ctx, (ModelSpec("standard"), p.main_at), progress=False)
            if r.seed in p.side_seed_list]
    cx.fill(ctx, [(flip_job, (r.spec, r.seed)) for r in deep], "flip radii")
    control_evals(ctx, calibrate(ctx, calibration_target(ctx)[0], p.seeds[0]))
    for r in deep:  # loaded (computed here when the jobs stay in this process: one worker)
        flip_radius(ctx, r.spec, r.seed)
    theory.cached_linear_experiment(ctx)
    theory.cached_gaussian_experiment(ctx, p.theory.gaussian, p.side_seed_list)
