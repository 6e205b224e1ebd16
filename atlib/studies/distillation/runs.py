"""Chapter 04's cached experiments: teacher outputs, distilled students, their attacks and masking checks.

The teachers are chapter 02's standard and main L∞-AT models, obtained through ``shrinkage.model_run``
(trained once for the whole book). Student ``seed`` is distilled from the teachers of the same seed, is
initialised and shuffled with it, and (for ``shuffle_nonmax``) draws its permutation from it: the seed
pairs students across ablations. Every artifact is keyed by everything that determines it, including
a hash of the teachers' weights and the code of the modules involved.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from atlib.core import attacks, data, models, oracles
from atlib.core.runtime import progress_default, seed_everything
from atlib.core.store import artifact_key, code_version_of, model_hash, tensor_hash
from atlib.studies import context as cx
from atlib.studies.distillation import targets as distill_targets
from atlib.studies.distillation import rules
from atlib.studies.distillation.targets import TeacherLogits, get_ablation
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.shrinkage import runs as shrinkage
from atlib.studies.context import Context
from atlib.studies.shrinkage.runs import ModelRun
from atlib.training import distill, masking, schedule, train

Tensor = torch.Tensor
SCHEMA = 1  # bump when the orchestration here (targets, seeds, the survivor chain) or a payload layout changes
# Teacher logits and students: the training loops (train, distill), the architecture, the data, the soft targets.
TRAIN_CODE = code_version_of(train.train, distill.distill, models.build_model, data.load_dataset,
                             distill_targets.targets)
# Transfer examples and student attacks: atlib's PGD, the torchattacks oracles (and their version), ``train.correct``
# and ``distill.survivors``, with their closures.
EVAL_CODE = code_version_of(attacks.make_attack, oracles.run_oracle, train.correct, distill.survivors) + "-ta" + \
    oracles.torchattacks_version()
WORST_CASE = ("ce", "margin", "apgd_ce", "apgd_dlr")  # a student's robust accuracy: the per-sample minimum over these


def eval_set(ctx: Context) -> tuple[Tensor, Tensor]:
    """The students' evaluation samples: the first ``eval_subset`` of the profile's evaluation subset."""
    n = min(ctx.profile.distill.eval_subset, len(ctx.eval_y))
    return ctx.eval_x[:n], ctx.eval_y[:n]


# ------------------------------------------------------------------------------------------ teachers
def teacher_specs(ctx: Context) -> dict[str, ModelSpec]:
    """The two teachers: the profile's main AT model and the standard model."""
    return {"at": ctx.profile.main_at, "std": ModelSpec("standard")}


def teachers(ctx: Context, seed: int, progress: bool | None = None) -> dict[str, ModelRun]:
    """Chapter 02's AT and standard models of ``seed`` (cache hits when chapter 02 ran first)."""
    return {k: shrinkage.model_run(ctx, spec, seed, progress) for k, spec in teacher_specs(ctx).items()}


def teacher_outputs(ctx: Context, tea: dict[str, ModelRun]) -> TeacherLogits:
    """Both teachers' logits on the (unaugmented) training set, computed once and cached."""
    cfg = {"schema": SCHEMA, "at": model_hash(tea["at"].model), "std": model_hash(tea["std"].model),
           "train": tensor_hash(ctx.data.train_x, ctx.data.train_y)}
    out, _ = ctx.store.get_or_compute(
        artifact_key("distill_teacher_logits", cfg, TRAIN_CODE, ctx.data.fingerprint),
        lambda: {k: train.predict(tea[k].model, ctx.data.train_x) for k in ("at", "std")}, meta=cfg)
    return TeacherLogits(out["at"], out["std"], ctx.data.train_y.cpu())


def transfer_inputs(ctx: Context, teacher: nn.Module, seed: int) -> Tensor:
    """PGD-CE adversarial examples (the evaluation attack) crafted on ``teacher`` for the students' samples."""
    x, y = eval_set(ctx)
    cfg_atk = ctx.profile.eval_attacks()["linf_ce"]
    cfg = {"schema": SCHEMA, "teacher": model_hash(teacher), "data": tensor_hash(x, y),
           "attack": asdict(cfg_atk), "seed": seed}
    out, _ = ctx.store.get_or_compute(
        artifact_key("distill_transfer", cfg, EVAL_CODE, ctx.data.fingerprint),
        lambda: {"x": attacks.make_attack(teacher, cfg_atk)(x, y, torch.Generator(device=x.device).manual_seed(seed)).cpu()},
        meta=cfg)
    return out["x"].to(x.device)


# ------------------------------------------------------------------------------------------ students
@dataclass
class StudentRun:
    """One trained student (or PGD-AT reference) with its per-sample robustness under every attack."""

    ablation: str  # an ABLATIONS name, or "pgd_at" for the PGD-AT student
    T: float | None  # None: no temperature (plain CE or PGD-AT)
    alpha: float
    seed: int
    model: nn.Module
    history: list[dict]
    robust: dict[str, Tensor]  # per-sample bool masks; see evaluate_student
    checks: list[dict]
    train_seconds: float
    cached: bool
    square: dict[str, Any] | None = None  # the Square check (square_check), on the arms that run it

    @property
    def flags(self) -> list[str]:
        return [c["flag"] for c in self.checks if not c["passed"]]

    def acc(self, key: str) -> float:
        return float(self.robust[key].float().mean())


def student_config(ctx: Context, ablation: str, T: float | None, seed: int, tea: dict[str, ModelRun]) -> dict:
    """Everything that determines a student (its cache key). ``hard_labels`` ignores T and the teachers."""
    s, p = ctx.profile.distill, ctx.profile
    ab = get_ablation(ablation)
    if ab.plain_ce:
        dc = distill.DistillConfig(1.0, 0.0, s.epochs, s.batch_size, p.lr, weight_decay=p.weight_decay)
        teach = None
    else:
        if T not in s.temperatures:
            raise ValueError(f"T={T!r} is not one of this profile's temperatures {s.temperatures}")
        dc = distill.DistillConfig(float(T), s.alpha, s.epochs, s.batch_size, s.lr_at(T), weight_decay=p.weight_decay)
        teach = {k: model_hash(v.model) for k, v in tea.items()}
    return {"schema": SCHEMA, "dataset": p.dataset, "train_subset": p.train_subset, "arch": p.arch,
            "width": s.student_width or p.width, "ablation": ablation, "distill": asdict(dc), "teachers": teach,
            "seed": seed, "precision": shrinkage.precision(ctx)}


def build_student(ctx: Context, seed: int) -> nn.Module:
    p, d = ctx.profile, ctx.data
    seed_everything(seed)
    return models.build_model(p.arch, d.shape, d.num_classes, d.mean, d.std,
                              ctx.profile.distill.student_width or p.width).to(ctx.device)


def _trained(ctx: Context, kind: str, cfg: dict, seed: int, fit) -> tuple[nn.Module, dict, str, bool]:
    model = build_student(ctx, seed)

    def compute() -> dict[str, Any]:
        t0 = time.perf_counter()
        hist = fit(model)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": hist,
                "train_seconds": time.perf_counter() - t0}

    key = artifact_key(kind, cfg, TRAIN_CODE, ctx.data.fingerprint)
    payload, hit = ctx.store.get_or_compute(key, compute, meta=cfg)
    if hit:
        model.load_state_dict(payload["state_dict"])
    return model.eval(), payload, key, hit


def eval_attacks(ctx: Context) -> dict[str, Any]:
    """The attacks of a student's evaluation, all built from the teachers' evaluation attacks (APGD and Square,
    torchattacks' oracles, attack the same L∞ ball as ``ce``)."""
    s, atk = ctx.profile.distill, ctx.profile.eval_attacks()
    ce = atk["linf_ce"]
    return {"ce": ce, "margin": atk["linf_margin"],
            "few": masking.same_family(ce, "linf", ce.eps, s.few_steps),
            "many": masking.same_family(ce, "linf", ce.eps, s.many_steps),
            "sweep": [masking.same_family(ce, "linf", e, ce.steps) for e in s.sweep_eps]}


def _oracle_survivors(model: nn.Module, x: Tensor, y: Tensor, alive: Tensor, name: str, cfg: attacks.AttackConfig,
                      ctx: Context, seed: int) -> Tensor:
    """``alive`` AND "the torchattacks oracle ``name`` fails", attacking only the alive samples."""
    s = ctx.profile.distill
    out = alive.cpu().bool().clone()
    idx = out.nonzero().squeeze(1)
    if len(idx):
        j = idx.to(x.device)
        xa = oracles.run_oracle(name, model, x[j], y[j], cfg, s.apgd_steps, 1, seed, queries=s.square_queries)
        out[idx] = train.correct(model, xa, y[j])
    return out


def evaluate_student(ctx: Context, model: nn.Module, model_key: str, seed: int,
                     transfer: dict[str, Tensor]) -> tuple[dict[str, Tensor], bool]:
    """Per-sample robustness masks (cached): ``clean``; ``ce``/``margin`` (the teachers' PGD attacks, on the
    clean-correct samples); ``apgd_ce``/``apgd_dlr`` (on the CE ∧ margin survivors: exact for the minimum);
    ``few`` (fewer-step PGD CE); ``many`` (more-step PGD CE on the CE ∧ margin survivors); ``eps_<ε>`` (PGD CE at
    each larger ε, each on the survivors of the previous one); ``transfer_at`` / ``transfer_std`` (the teachers'
    PGD-CE examples). Derived: ``pgd`` (CE ∧ margin), ``robust`` (the worst case over :data:`WORST_CASE`, the
    primary measure) and ``worst`` (every attack at the main ε)."""
    x, y = eval_set(ctx)
    A, s = eval_attacks(ctx), ctx.profile.distill
    cfg = {"schema": SCHEMA, "model": model_key, "data": tensor_hash(x, y), "seed": seed, "apgd_steps": s.apgd_steps,
           "attacks": {k: [asdict(c) for c in v] if isinstance(v, list) else asdict(v) for k, v in A.items()},
           "transfer": {k: tensor_hash(v) for k, v in transfer.items()}}

    def compute() -> dict[str, Tensor]:
        r: dict[str, Tensor] = {"clean": train.correct(model, x, y)}
        for i, k in enumerate(("ce", "margin", "few")):
            r[k] = distill.survivors(model, x, y, r["clean"], A[k], seed + 1000 * i)
        for i, k in enumerate(("apgd_ce", "apgd_dlr")):
            r[k] = _oracle_survivors(model, x, y, r["ce"] & r["margin"], k, A["ce"], ctx, seed + 5000 + i)
        r["many"] = distill.survivors(model, x, y, r["ce"] & r["margin"], A["many"], seed + 3000)
        alive = r["many"]
        for j, c in enumerate(A["sweep"]):
            alive = distill.survivors(model, x, y, alive, c, seed + 4000 + j)
            r[f"eps_{c.eps:g}"] = alive
        for k, xa in transfer.items():
            r[f"transfer_{k}"] = train.correct(model, xa, y)
        return r

    r, hit = ctx.store.get_or_compute(artifact_key("distill_eval", cfg, EVAL_CODE, ctx.data.fingerprint),
                                      compute, meta=cfg)
    r["pgd"] = r["ce"] & r["margin"]
    r["robust"] = r["ce"] & r["margin"] & r["apgd_ce"] & r["apgd_dlr"]
    r["worst"] = r["robust"] & r["many"] & r["few"] & r["transfer_at"] & r["transfer_std"]
    return r, hit


def masking_checks(ctx: Context, r: dict[str, Tensor]) -> list[dict]:
    """The gradient-masking checks of one model (rules in the chapter), each ``{flag, passed, value, threshold, detail}``.

    Thresholds are ``masking.noise_threshold``: two binomial standard errors, at least three samples' worth.
    """
    s, n, k = ctx.profile.distill, len(r["clean"]), ctx.data.num_classes
    acc = {key: float(v.float().mean()) for key, v in r.items()}
    last = f"eps_{s.sweep_eps[-1]:g}"
    chance, rob = 1 / k, acc["pgd"]
    tests = [
        ("above_chance_at_eps_0.5", acc[last] - chance, masking.noise_threshold(chance, n),
         f"L∞ ε={s.sweep_eps[-1]:g}: {100 * acc[last]:.1f}% vs chance {100 * chance:.0f}%"),
        ("more_steps_lower_acc", rob - acc["many"], masking.noise_threshold(rob, n),
         f"PGD-{s.many_steps} on survivors: {100 * rob:.1f}% → {100 * acc['many']:.1f}%"),
        ("more_steps_raise_acc", acc["ce"] - acc["few"], masking.noise_threshold(acc["few"], n),
         f"PGD-{s.few_steps} {100 * acc['few']:.1f}% vs PGD-{ctx.profile.eval_steps} {100 * acc['ce']:.1f}%"),
    ]
    for t in ("at", "std"):
        tests.append((f"transfer_from_{t}_stronger", rob - acc[f"transfer_{t}"], masking.noise_threshold(rob, n),
                      f"white-box {100 * rob:.1f}%, transfer from the {t.upper()} teacher {100 * acc[f'transfer_{t}']:.1f}%"))
    return [{"flag": f, "value": v, "threshold": th, "passed": bool(v <= th), "detail": d} for f, v, th, d in tests]


def square_check(ctx: Context, model: nn.Module, model_key: str, seed: int, r: dict[str, Tensor]) -> dict[str, Any]:
    """Square (gradient-free, L∞, ``square_queries`` queries) on the first ``square_subset`` evaluation images,
    cached; ``passed`` unless its accuracy is below the gradient worst case on the same images by more than
    the noise threshold (the audit's: two binomial standard errors, at least three samples)."""
    s = ctx.profile.distill
    x, y = (t[:s.square_subset] for t in eval_set(ctx))
    ce = eval_attacks(ctx)["ce"]
    cfg = {"schema": SCHEMA, "model": model_key, "data": tensor_hash(x, y), "seed": seed, "eps": ce.eps,
           "queries": s.square_queries}
    out, _ = ctx.store.get_or_compute(
        artifact_key("distill_square", cfg, EVAL_CODE, ctx.data.fingerprint),
        lambda: {"square": _oracle_survivors(model, x, y, r["clean"][:len(y)], "square", ce, ctx, seed + 6000)},
        meta=cfg)
    return square_verdict(out["square"], r["robust"][:len(y)], s.square_queries)


def square_verdict(square: Tensor, gradient: Tensor, queries: int) -> dict[str, Any]:
    """The Square check from per-sample masks on the same images: flagged if Square's accuracy is below the gradient
    attacks' worst case by more than ``masking.noise_threshold`` (a random search beating the gradients: masking)."""
    n = len(gradient)
    sq, grad = float(square.float().mean()), float(gradient.float().mean())
    th = masking.noise_threshold(grad, n)
    return {"flag": "square_below_gradient", "value": grad - sq, "threshold": th, "passed": bool(grad - sq <= th),
            "square_acc": sq, "gradient_acc": grad, "n": n, "queries": queries,
            "detail": f"Square ({queries} queries) {100 * sq:.1f}% vs gradient worst case {100 * grad:.1f}% on {n} images"}


def _transfers(ctx: Context, tea: dict[str, ModelRun], seed: int) -> dict[str, Tensor]:
    return {k: transfer_inputs(ctx, tea[k].model, seed) for k in ("at", "std")}


def _checked(ctx: Context, run: StudentRun, key: str) -> StudentRun:
    """The Square check, on the arms that run it (``rules.RULE.square_arms``), joins the masking checks."""
    if run.ablation in rules.RULE.square_arms:
        run.square = square_check(ctx, run.model, key, run.seed, run.robust)
        run.checks = run.checks + [run.square]
    return run


def student_run(ctx: Context, ablation: str, T: float | None, seed: int, progress: bool | None = None,
                tea: dict[str, ModelRun] | None = None, tl: TeacherLogits | None = None) -> StudentRun:
    """Distil (or load) the student of ``ablation`` at ``T`` and ``seed``, attack it and run its masking checks."""
    progress = progress_default() if progress is None else progress
    ab = get_ablation(ablation)
    tea = tea or teachers(ctx, seed, progress)
    cfg = student_config(ctx, ablation, T, seed, tea)
    dc = distill.DistillConfig(**cfg["distill"])

    def fit(model: nn.Module) -> list[dict]:
        t = tl or teacher_outputs(ctx, tea)
        tgt = ab(t, dc.T, seed).float().to(ctx.device)
        return distill.distill(model, ctx.data.train_x, tgt, ctx.data.train_y, dc, seed,
                               name=f"{ablation} T={T} seed {seed}", progress=progress, precision=cfg["precision"])

    model, payload, key, hit = _trained(ctx, "distill_student", cfg, seed, fit)
    r, _ = evaluate_student(ctx, model, key, seed, _transfers(ctx, tea, seed))
    run = StudentRun(ablation, None if ab.plain_ce else float(T), dc.alpha, seed, model, payload["history"], r,
                     masking_checks(ctx, r), payload["train_seconds"], hit)
    return _checked(ctx, run, key)


def ceiling_train_config(ctx: Context) -> train.TrainConfig:
    """The PGD-AT student's training: the main AT model's config at the students' epochs and batch size."""
    s, p = ctx.profile.distill, ctx.profile
    return replace(p.train_config(p.main_at), epochs=s.epochs, batch_size=s.batch_size, augment=False)


def ceiling_config(ctx: Context, seed: int) -> dict:
    """Everything that determines the PGD-AT student of ``seed`` (its cache key)."""
    s, p = ctx.profile.distill, ctx.profile
    return {"schema": SCHEMA, "dataset": p.dataset, "train_subset": p.train_subset, "arch": p.arch,
            "width": s.student_width or p.width, "train": asdict(ceiling_train_config(ctx)), "seed": seed,
            "precision": shrinkage.precision(ctx)}


def ceiling_run(ctx: Context, seed: int, progress: bool | None = None,
                tea: dict[str, ModelRun] | None = None) -> StudentRun:
    """The PGD-AT student: the student architecture and schedule trained with the teachers' PGD-AT attack."""
    progress = progress_default() if progress is None else progress
    tea = tea or teachers(ctx, seed, progress)
    tc, cfg = ceiling_train_config(ctx), ceiling_config(ctx, seed)
    model, payload, key, hit = _trained(
        ctx, "distill_pgd_at", cfg, seed,
        lambda m: train.train(m, ctx.data.train_x, ctx.data.train_y, tc, seed, name=f"PGD-AT student seed {seed}",
                              progress=progress, precision=cfg["precision"]))
    r, _ = evaluate_student(ctx, model, key, seed, _transfers(ctx, tea, seed))
    return StudentRun("pgd_at", None, 0.0, seed, model, payload["history"], r, masking_checks(ctx, r),
                      payload["train_seconds"], hit)


# ---------------------------------------------------------------------------------------------- grid
@dataclass
class Grid:
    """Every student of the chapter, the PGD-AT references and the teachers."""

    students: list[StudentRun]
    ceiling: list[StudentRun]
    teachers: dict[int, dict[str, ModelRun]]
    outputs: dict[int, TeacherLogits]
    temperatures: tuple[float, ...]
    seeds: tuple[int, ...]
    n_eval: int
    seconds: float

    def runs(self, ablation: str, T: float | None) -> list[StudentRun]:
        """The students of one (ablation, T), by seed; ``hard_labels`` ignores T."""
        plain = get_ablation(ablation).plain_ce
        return sorted((r for r in self.students if r.ablation == ablation and (plain or r.T == T)),
                      key=lambda r: r.seed)


def configs(ctx: Context) -> list[tuple[str, float | None]]:
    """Every distinct (ablation, T) to train: each ablation at each T, ``hard_labels`` once."""
    out: list[tuple[str, float | None]] = []
    for name, ab in distill_targets.ABLATIONS.items():
        out += [(name, None)] if ab.plain_ce else [(name, T) for T in ctx.profile.distill.temperatures]
    return out


def teacher_job(ctx: Context, seed: int) -> None:
    """The teachers' work that every student of ``seed`` reads: their training-set logits and transfer examples."""
    tea = teachers(ctx, seed, progress=False)
    teacher_outputs(ctx, tea)
    _transfers(ctx, tea, seed)


def cost(ctx: Context, job: tuple) -> float:
    """A student job's training cost in passes over one image (PGD steps included), as ``shrinkage.cost`` counts."""
    fn, args = job
    s, atk = ctx.profile.distill, ctx.profile.train_config(ctx.profile.main_at).attack
    return s.epochs * len(ctx.data.train_y) * (atk.steps + 1 if fn is ceiling_run and atk else 1)


def run_grid(ctx: Context, progress: bool | None = None) -> Grid:
    """Train (or load) every student of every seed, then the PGD-AT references; attack and check all. Kept in this
    process once loaded (:data:`_GRIDS`): chapter 05 audits the grid chapter 04 loaded."""
    memo = (ctx.profile, str(ctx.store.root), ctx.data.fingerprint, str(ctx.device))
    if memo in _GRIDS:
        return _GRIDS[memo]
    progress = progress_default() if progress is None else progress
    t0 = time.perf_counter()
    seeds = ctx.profile.seeds  # the paired seeds: every main seed of chapter 02, one student each
    cx.fill(ctx, [(shrinkage.model_run, (sp, s)) for s in seeds for sp in teacher_specs(ctx).values()],
            "teachers", progress, order=lambda job: shrinkage.order(ctx, job[1][0]))
    cx.fill(ctx, [(teacher_job, (s,)) for s in seeds], "teacher outputs", progress,
            order=lambda job: (schedule.STEP, 0.0))
    tea = {s: teachers(ctx, s, progress) for s in seeds}
    outs = {s: teacher_outputs(ctx, tea[s]) for s in seeds}
    for s in seeds:
        _transfers(ctx, tea[s], s)  # here once (cached by teacher_job with workers), not raced by the workers below
    jobs = [(a, T, s) for s in seeds for a, T in configs(ctx)]
    cx.fill(ctx, [(ceiling_run, (s,)) for s in seeds] + [(student_run, j) for j in jobs],  # longest first
            "students", progress, order=lambda job: (schedule.BULK, -cost(ctx, job)))
    bar = tqdm(jobs, desc=f"{ctx.profile.name}: students", disable=not progress)
    students = []
    for a, T, s in bar:
        bar.set_postfix_str(f"{a}, T={T}, seed {s}")
        students.append(student_run(ctx, a, T, s, progress=False, tea=tea[s], tl=outs[s]))
    ceiling = [ceiling_run(ctx, s, progress=False, tea=tea[s]) for s in
               tqdm(seeds, desc="PGD-AT students", disable=not progress)]
    grid = Grid(students, ceiling, tea, outs, ctx.profile.distill.temperatures, tuple(seeds), len(eval_set(ctx)[1]),
                time.perf_counter() - t0)
    if all(r.cached for r in students + ceiling):  # a grid that computed in-process is re-read next time
        _GRIDS[memo] = grid
    return grid


_GRIDS: dict[tuple, Grid] = {}  # run_grid's results in this process, by (profile, store, data, device)
