"""How strong are atlib's attacks? Independent oracles, worst-case robust accuracy, masking checks.

atlib's batched PGD is the book's fast core; this module checks it against attacks it did not write:
torchattacks' PGD (L∞) / PGDL2 with the same ε, steps and step size, and torchattacks' APGD with the
cross-entropy and the DLR loss (the two untargeted attacks of AutoAttack). A sample counts as robust
only if it survives *every* attack (per-sample minimum): that is the **worst-case robust accuracy**.

Flags (``pgd_ce_vs_torchattacks``, ``pgd_ce_vs_apgd``, ``pgd_margin_vs_apgd``) follow the audit's rule object,
:data:`atlib.studies.audit.rules.RULE`, fixed before any number was seen (the chapter glues its text).

Gradient-masking checks run on a smaller fixed subset, one model per kind; their rules and noise
threshold live in :mod:`atlib.training.masking`.

Every result is cached per model: the key holds a hash of the model's weights and structure, the
samples, the threat model, the settings, the code of this module and of the attacks, and the
torchattacks version, so the same function serves the teachers of chapter 02 and any later model
(distilled students) without confusion. Tables, text, the summary entry and the diagnosis of a flag
live in ``atlib.studies.audit.views``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from atlib.core.attacks import AttackConfig
from atlib.core.oracles import run_oracle, torchattacks_version
from atlib.training import evaluate
from atlib.training.masking import masking_checks
from atlib.core.runtime import progress_default
from atlib.core.store import Store, artifact_key, code_version_of, model_hash, tensor_hash
from atlib.studies.audit import rules
from atlib.studies.audit.settings import AuditSettings
from atlib.training.train import correct

Tensor = torch.Tensor
SCHEMA = 1  # bump when a payload layout changes

# Main-table attacks, in display order: key -> column title.
ATTACKS = {
    "atlib_pgd_ce": "atlib PGD-CE",
    "atlib_pgd_margin": "atlib PGD-margin",
    "ta_pgd": "torchattacks PGD",
    "apgd_ce": "APGD-CE",
    "apgd_dlr": "APGD-DLR",
}


# ---------------------------------------------------------------- oracles (in atlib.core.oracles)

def worst_case(robust: Mapping[str, Tensor]) -> Tensor:
    """A sample is robust only if it survives every attack (per-sample AND, i.e. the minimum)."""
    if not robust:
        raise ValueError("worst_case needs at least one attack's per-sample results")
    masks = list(robust.values())
    if len({m.shape for m in masks}) != 1:
        raise ValueError(f"per-sample results of different lengths: { {k: tuple(v.shape) for k, v in robust.items()} }")
    out = masks[0].clone().bool()
    for m in masks[1:]:
        out &= m.bool()
    return out


# ---------------------------------------------------------------- identities for the cache

def _code(extra: Sequence[ModuleType] = ()) -> str:
    """The import closure of this module (masking, attacks, evaluate, train) and of ``extra``, plus torchattacks."""
    return code_version_of(__name__, *extra) + "-ta" + torchattacks_version()


def _cached(store: Store | None, kind: str, cfg: dict[str, Any], data_fp: str, fn: Callable[[], dict],
            extra: Sequence[ModuleType] = ()) -> tuple[dict, bool]:
    """``fn()``, through ``store`` when one is given; the key covers this module, the attacks and ``extra``."""
    if store is None:
        return fn(), False
    return store.get_or_compute(artifact_key(kind, cfg, _code(extra), data_fp), fn, meta=cfg)


# ---------------------------------------------------------------- the main table

def _check_in_threat(xa: Tensor, x: Tensor, cfg: AttackConfig, who: str) -> None:
    """An oracle's output must lie in the box and the ball, else its accuracy means nothing."""
    d = (xa - x).flatten(1)
    size = d.abs().amax(1) if cfg.norm == "linf" else d.norm(dim=1)
    if xa.min() < -1e-6 or xa.max() > 1 + 1e-6 or size.max() > cfg.eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"{who} left the threat model ({cfg.norm} ε={cfg.eps}): max size {float(size.max()):.4g}")


def audit_model(model: nn.Module, x: Tensor, y: Tensor, threat: AttackConfig, settings: AuditSettings, seed: int,
                atlib_logits: Mapping[str, Tensor] | None = None, store: Store | None = None,
                data_fp: str = "") -> dict[str, Any]:
    """Clean, atlib PGD-CE/margin, torchattacks PGD, APGD-CE, APGD-DLR and worst case on (x, y).

    ``threat`` is atlib's PGD-CE evaluation attack of this model (norm, ε, steps, step size); the
    margin run and the torchattacks PGD use the same settings. ``atlib_logits`` may hand in logits
    atlib already computed with exactly these attacks (``{"ce": ..., "margin": ...}``, one row per
    sample), e.g. chapter 02's cached ones, or per-sample robust masks of exactly these attacks (a bool vector per
    attack), e.g. chapter 04's. Returns per-sample robust masks, accuracies and flags.
    """
    if threat.loss != "ce":
        raise ValueError(f"threat must be atlib's PGD-CE config (got loss {threat.loss!r})")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    if atlib_logits is not None and any(len(v) != len(y) for v in atlib_logits.values()):
        raise ValueError("atlib_logits must have one row per sample of x")
    margin_cfg = replace(threat, loss="margin")
    cfg = {"schema": SCHEMA, "model": model_hash(model), "data": tensor_hash(x, y), "threat": asdict(threat),
           "settings": asdict(settings), "seed": seed, "atlib_given": atlib_logits is not None}

    def compute() -> dict[str, Any]:
        robust: dict[str, Tensor] = {"clean": correct(model, x, y)}
        for key, c in (("ce", threat), ("margin", margin_cfg)):
            z = atlib_logits[key] if atlib_logits is not None else \
                evaluate.adversarial_logits(model, x, y, c, seed, settings.batch_size)
            robust[f"atlib_pgd_{key}"] = z.cpu() if z.dtype == torch.bool else z.argmax(1) == y.cpu()
        for name in ("ta_pgd", "apgd_ce", "apgd_dlr"):
            xa = run_oracle(name, model, x, y, threat, settings.apgd_steps, settings.apgd_restarts, seed,
                            settings.batch_size)
            _check_in_threat(xa, x, threat, name)
            robust[name] = correct(model, xa, y)
        return {"robust": robust}

    payload, hit = _cached(store, "audit", cfg, data_fp, compute)
    robust = payload["robust"]
    robust["worst_case"] = worst_case({k: v for k, v in robust.items()})
    acc = {k: float(v.float().mean()) for k, v in robust.items()}
    return {"robust": robust, "acc": acc, "flags": rules.RULE.flags(acc), "n": len(y), "cached": hit}


# ---------------------------------------------------------------- a list of models

@dataclass
class Target:
    """One model to audit: its name, the model, atlib's PGD-CE config of its threat model, its seed."""

    name: str
    model: nn.Module
    threat: AttackConfig
    seed: int = 0
    group: str = ""  # models of one group (same recipe, different seeds) are aggregated over seeds
    atlib_logits: Mapping[str, Tensor] | None = None
    surrogate: nn.Module | None = None  # for the transfer check; only targets with masking=True use it
    masking: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def audit(targets: Sequence[Target] | Sequence[tuple[str, nn.Module]], x: Tensor, y: Tensor,
          settings: AuditSettings, num_classes: int, threat: AttackConfig | None = None,
          store: Store | None = None, data_fp: str = "", progress: bool | None = None) -> list[dict[str, Any]]:
    """Audit every target (or plain ``(name, model)`` pairs, all under ``threat``) on (x, y).

    The main table uses the first ``settings.main_subset`` samples, the masking checks the first
    ``settings.masking_subset`` of those. Returns one record per model, in order.
    """
    progress = progress_default() if progress is None else progress
    tg = [t if isinstance(t, Target) else Target(t[0], t[1], _need(threat)) for t in targets]
    if len({t.name for t in tg}) != len(tg):
        raise ValueError("model names must be unique")
    n = len(y) if settings.main_subset is None else min(settings.main_subset, len(y))
    xm, ym = x[:n], y[:n]
    k = min(settings.masking_subset, n)
    out = []
    for t in tqdm(tg, desc="audit", disable=not progress):
        given = {key: v[:n] for key, v in t.atlib_logits.items()} if t.atlib_logits is not None else None
        main = audit_model(t.model, xm, ym, t.threat, settings, t.seed, given, store, data_fp)
        rec = {"name": t.name, "group": t.group or t.name, "seed": t.seed, "meta": dict(t.meta),
               "threat": _threat_record(t.threat), "n": main["n"], "acc": main["acc"], "robust": main["robust"],
               "flags": list(main["flags"]), "masking": None, "cached": main["cached"]}
        if t.masking:
            m = masking_checks(t.model, xm[:k], ym[:k], t.threat, settings, t.seed, num_classes, t.surrogate,
                               store, data_fp)
            rec["masking"] = {"n": k, "raw": m["raw"], "checks": m["checks"]}
            rec["flags"] += m["flags"]
        out.append(rec)
    return out


def _need(threat: AttackConfig | None) -> AttackConfig:
    if threat is None:
        raise ValueError("plain (name, model) pairs need a threat= AttackConfig")
    return threat


def _threat_record(c: AttackConfig) -> dict[str, Any]:
    return {"norm": c.norm, "eps": c.eps, "steps": c.steps, "step_size": c.step_size, "schedule": c.schedule,
            "random_start": c.random_start}


# ---------------------------------------------------------------- chapter 02's models

def training_targets(ctx: Any, runs: Sequence[Any]) -> list[Target]:
    """Targets for chapter 02's runs: each under its own threat model (L2-AT under L2, the rest L∞),
    atlib's cached PGD logits reused; masking checks on the first seed of each kind, with the same
    kind at the next seed as the transfer surrogate."""
    atk = ctx.profile.eval_attacks()
    by_spec: dict[Any, list[Any]] = {}
    for r in runs:
        by_spec.setdefault(r.spec, []).append(r)
    out = []
    for r in runs:
        own = "l2" if r.spec.norm == "l2" else "linf"
        same = sorted(by_spec[r.spec], key=lambda q: q.seed)
        first = same[0] is r
        sur = same[1].model if first and len(same) > 1 else None
        out.append(Target(r.name, r.model, atk[f"{own}_ce"], r.seed, r.spec.label,
                          {"ce": r.logits[f"{own}_ce"], "margin": r.logits[f"{own}_margin"]},
                          sur, masking=first,
                          meta={"kind": r.spec.kind, "norm": r.spec.norm, "eps": r.spec.eps,
                                "surrogate": same[1].name if sur is not None else None}))
    return out


def audit_runs(ctx: Any, runs: Sequence[Any], settings: AuditSettings | None = None,
               progress: bool | None = None) -> list[dict[str, Any]]:
    """:func:`audit` of chapter 02's models on the profile's evaluation subset, cached in ``ctx.store``."""
    s = settings or ctx.profile.audit
    return audit(training_targets(ctx, runs), ctx.eval_x, ctx.eval_y, s, ctx.data.num_classes,
                 store=ctx.store, data_fp=ctx.data.fingerprint, progress=progress)


# ---------------------------------------------------------------- chapter 04's students

def student_targets(ctx: Any, grid: Any, seeds: Sequence[int] | None = None) -> list[Target]:
    """Targets for chapter 04's distilled students and PGD-AT students (a ``distill_runs.Grid``), all under
    the teachers' main L∞ PGD-CE attack; ``seeds`` (default: the profile's side seeds, chapter 04's) picks which.
    atlib's PGD-CE and PGD-margin results are chapter 04's own (the same attacks on the same images and models:
    chapter 04 publishes them, this chapter audits them); no masking checks here: chapter 04 runs its own."""
    ce = ctx.profile.eval_attacks()["linf_ce"]
    keep = set(ctx.profile.side_seed_list if seeds is None else seeds)
    out = []
    for r in [*grid.students, *grid.ceiling]:
        if r.seed not in keep:
            continue
        recipe = "PGD-AT student" if r.ablation == "pgd_at" else \
            f"student: {r.ablation}" + (f", T={r.T:g}" if r.T is not None else "")
        out.append(Target(f"{recipe} (seed {r.seed})", r.model, ce, r.seed, recipe,
                          {"ce": r.robust["ce"], "margin": r.robust["margin"]},  # chapter 04's own PGD results
                          meta={"kind": "student", "ablation": r.ablation, "T": r.T}))
    return out


def audit_students(ctx: Any, grid: Any, settings: AuditSettings | None = None, seeds: Sequence[int] | None = None,
                   progress: bool | None = None) -> list[dict[str, Any]]:
    """:func:`audit` of chapter 04's students on chapter 04's own evaluation samples (the first
    ``grid.n_eval`` of the evaluation subset, so both chapters attack the same images), cached in
    ``ctx.store``; ``seeds`` defaults to the first ``settings.student_seeds`` seeds of the profile."""
    s = settings or ctx.profile.audit
    if seeds is None:
        seeds = ctx.profile.side_seed_list[:s.student_seeds]
    return audit(student_targets(ctx, grid, seeds), ctx.eval_x, ctx.eval_y, replace(s, main_subset=grid.n_eval),
                 ctx.data.num_classes, store=ctx.store, data_fp=ctx.data.fingerprint, progress=progress)

