"""Chapter 02's cached runs: the standard and AT models every chapter reuses.

``model_run(ctx, spec, seed)`` trains (or loads from the store) one model of a profile and evaluates
it on the profile's fixed evaluation subset under every evaluation attack. Whichever chapter asks
first trains it once; every later call is a cache hit.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from atlib.core import data, models, stats
from atlib.core.runtime import progress_default, seed_everything, train_precision
from atlib.core.store import artifact_key, code_version_of, model_hash
from atlib.studies.context import Context, fill, selection_set
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.training import distributed, evaluate, schedule, train

SCHEMA = 2  # bump when the payload layout of a trained model or of its evaluation changes
SNAPSHOT_SCHEMA = 3  # the standard run's per-epoch snapshots (3: saved by the run itself)
STANDARD = ModelSpec("standard")
# A trained model: the training loop (with its attacks, stats, checkpoints), the architecture and the data
# loaders, each with its import closure; not this module, which imports the evaluation too.
TRAIN_CODE = code_version_of(train.train, models.build_model, data.load_dataset)
# Its evaluation: evaluate's closure (attacks, and train's predict with its closure); retrain-free fixes.
EVAL_CODE = code_version_of(evaluate.evaluate)
CODE = TRAIN_CODE + "-" + EVAL_CODE
PREDICT_CODE = code_version_of(train.predict)  # cached clean predictions (:func:`predict`)

Tensor = torch.Tensor


@dataclass
class ModelRun:
    """A trained model with its history and its logits on the evaluation subset (clean and attacked)."""

    spec: ModelSpec
    seed: int
    model: nn.Module
    history: list[dict]
    logits: dict[str, Tensor]
    labels: Tensor
    train_seconds: float
    cached: bool

    @property
    def name(self) -> str:
        return f"{self.spec.name}_s{self.seed}"

    def acc(self, key: str = "clean") -> float:
        return stats.accuracy(self.logits[key], self.labels)

    def logit_stats(self, key: str = "clean") -> dict[str, float]:
        return stats.logit_summary(self.logits[key], self.labels)


def build(ctx: Context, seed: int) -> nn.Module:
    """A freshly initialised model of the profile's architecture (initialisation seeded by ``seed``)."""
    p, d = ctx.profile, ctx.data
    seed_everything(seed)
    return models.build_model(p.arch, d.shape, d.num_classes, d.mean, d.std, p.width).to(ctx.device)


def run_config(ctx: Context, spec: ModelSpec, seed: int) -> dict[str, Any]:
    """Everything that determines a trained model (its cache key; the eval subset is monitored in training)."""
    p = ctx.profile
    return {"schema": SCHEMA, "dataset": p.dataset, "train_subset": p.train_subset, "arch": p.arch,
            "width": p.width, "spec": asdict(spec), "train": p.train_config(spec), "seed": seed,
            "eval_subset": p.eval_subset, "fast": fast(ctx), "precision": precision(ctx)}


def fast(ctx: Context) -> bool:
    """Whether training takes atlib's CUDA fast path (bf16, channels_last, compile): the profile asks for it
    (``Profile.fast``) and the device is a GPU. Part of every model's cache key: bf16 changes the floats."""
    return ctx.profile.fast and ctx.device.type == "cuda"


def precision(ctx: Context) -> str:
    """The precision every training run of the book takes on this device ("fp32" or "bf16"): the profile's request
    (``Profile.precision``) resolved by :func:`atlib.core.runtime.train_precision`. Part of every trained artifact's
    cache key (models, matched models, controls, students): bf16 changes the floats."""
    return train_precision(ctx.profile.precision, ctx.device, ctx.profile.fast)


def checkpoint_path(ctx: Context, key: str) -> Path:
    """Where training of the artifact ``key`` keeps its per-epoch checkpoint until the artifact is stored."""
    return ctx.store.root / "checkpoints" / f"{key}.pt"


def trained_model(ctx: Context, spec: ModelSpec, seed: int, progress: bool | None = None, light: bool = False
                  ) -> tuple[nn.Module, dict[str, Any], str, bool]:
    """Train one model, or load it: ``(model in eval mode, {history, train_seconds}, cache key, hit)``.

    Training checkpoints every epoch (:func:`checkpoint_path`): a run killed mid-way resumes from its last
    finished epoch when asked again (the same call, the same ``compute`` or ``book`` command). ``light``: no
    monitor statistics and no checkpoints, for runs of many tiny epochs (chapter 03's matched models on a few
    hundred images); neither touches the weights, so the artifact is the same and so is its key."""
    progress = progress_default() if progress is None else progress
    cfg = run_config(ctx, spec, seed)
    key = artifact_key("model", cfg, TRAIN_CODE, ctx.data.fingerprint)
    model = build(ctx, seed)
    ckpt = checkpoint_path(ctx, key)

    def compute() -> dict[str, Any]:
        t0 = time.perf_counter()
        snap = Snapshots(ctx) if spec == STANDARD and not light else None  # chapter 03's early-stopped snapshots
        hist = train.train(model, ctx.data.train_x, ctx.data.train_y, ctx.profile.train_config(spec), seed,
                           monitor=None if light else (ctx.eval_x, ctx.eval_y), name=f"train {spec.label} seed {seed}",
                           progress=progress, checkpoint=None if light else ckpt, fast=fast(ctx),
                           precision=precision(ctx), on_epoch_end=snap)
        if snap is not None and snap.complete(len(hist)):  # a resumed run saw only its last epochs: not saved
            ctx.store.save(snapshot_key(ctx, seed), snap.payload(hist), meta=snapshot_config(ctx, seed),
                           seconds=snap.seconds)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": hist,
                "train_seconds": time.perf_counter() - t0}

    payload, hit = ctx.store.get_or_compute(key, compute, meta=cfg)
    if not hit and distributed.rank_world()[0] == 0:
        ckpt.unlink(missing_ok=True)  # the artifact is stored: a resume point is no longer needed
    if hit:
        model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload, key, hit


class Snapshots:
    """``on_epoch_end`` of the standard run: after every epoch, the clean logits on the whole test set and the
    accuracy on chapter 03's selection set (:func:`atlib.studies.context.selection_set`). Forward passes in eval
    mode only: the run's weights are bitwise those of a run without it."""

    def __init__(self, ctx: Context):
        c = ctx.profile.confidence
        self.test_x = ctx.data.test_x
        self.sel_x, self.sel_y, _ = selection_set(ctx, c.select_on, c.holdout, ctx.data_root)
        self.test_logits: list[Tensor] = []
        self.select_acc: list[float] = []
        self.seconds = 0.0  # what recording cost (its artifact's recorded compute time)

    def __call__(self, epoch: int, model: nn.Module, record: dict) -> None:
        t0 = time.perf_counter()
        self.test_logits.append(train.predict(model, self.test_x))
        self.select_acc.append(stats.accuracy(train.predict(model, self.sel_x), self.sel_y.cpu()))
        self.seconds += time.perf_counter() - t0

    def complete(self, epochs: int) -> bool:
        return len(self.select_acc) == epochs

    def payload(self, history: list[dict]) -> dict[str, Any]:
        return {"test_logits": torch.stack(self.test_logits), "select_acc": self.select_acc, "history": history}


def snapshot_config(ctx: Context, seed: int) -> dict[str, Any]:
    c = ctx.profile.confidence
    return {"schema": SNAPSHOT_SCHEMA, "std_run": run_config(ctx, STANDARD, seed), "select_on": c.select_on,
            "holdout": c.holdout if c.select_on == "holdout" else 0}


def snapshot_key(ctx: Context, seed: int) -> str:
    return artifact_key("stdsnapshots", snapshot_config(ctx, seed), TRAIN_CODE, ctx.data.fingerprint)


def std_snapshots(ctx: Context, seed: int, progress: bool = False) -> tuple[dict[str, Any], bool]:
    """The standard run's per-epoch :class:`Snapshots` of ``seed``: saved by its own training job (chapter 02's
    model), re-trained here (the same run) only if that artifact is missing."""
    def compute() -> dict[str, Any]:
        model, snap = build(ctx, seed), Snapshots(ctx)
        hist = train.train(model, ctx.data.train_x, ctx.data.train_y, ctx.profile.train_config(STANDARD), seed,
                           monitor=(ctx.eval_x, ctx.eval_y), name=f"standard seed {seed} (snapshots)",
                           progress=progress, fast=fast(ctx), precision=precision(ctx), on_epoch_end=snap)
        return snap.payload(hist)

    return ctx.store.get_or_compute(snapshot_key(ctx, seed), compute, meta=snapshot_config(ctx, seed))


def predict(ctx: Context, model: nn.Module, x: Tensor, what: str) -> Tensor:
    """``train.predict(model, x)``, cached: clean logits of a stored model on a named input set of this profile's
    data (``what`` names it, e.g. ``"test"``: two sets may share a name only if they are equal). Chapters re-read
    them on every build; the forward passes run once."""
    cfg = {"model": model_hash(model), "inputs": what, "n": len(x)}
    out, _ = ctx.store.get_or_compute(artifact_key("predict", cfg, PREDICT_CODE, ctx.data.fingerprint),
                                      lambda: {"logits": train.predict(model, x)}, meta=cfg)
    return out["logits"]


def model_run(ctx: Context, spec: ModelSpec, seed: int, progress: bool | None = None) -> ModelRun:
    """Train and evaluate one model, or load either from the store if this exact run was done before.

    Training and evaluation are cached apart: a change of the evaluation attacks (or of their code)
    re-attacks the stored model instead of retraining it.
    """
    progress = progress_default() if progress is None else progress
    model, trained, model_key, hit = trained_model(ctx, spec, seed, progress)
    ecfg = {"schema": SCHEMA, "model": model_key, "eval_subset": ctx.profile.eval_subset,
            "eval_attacks": ctx.profile.eval_attacks(), "seed": seed}
    logits, _ = ctx.store.get_or_compute(
        artifact_key("evaluation", ecfg, EVAL_CODE, ctx.data.fingerprint),
        lambda: evaluate.evaluate(model, ctx.eval_x, ctx.eval_y, ctx.profile.eval_attacks(), seed,
                                  desc=f"attack {spec.label} seed {seed}" if progress else None), meta=ecfg)
    return ModelRun(spec, seed, model, trained["history"], logits, ctx.eval_y.cpu(), trained["train_seconds"], hit)


def training_runs(ctx: Context, specs: tuple[ModelSpec, ...] | None = None,
                  progress: bool | None = None, seeds: tuple[int, ...] | None = None) -> list[ModelRun]:
    """Every (spec, seed) of the profile (or of ``specs``), trained or loaded: every seed for the standard and main
    AT models, the side seeds for the others (``Profile.seeds_for``); ``seeds`` keeps only those."""
    progress = progress_default() if progress is None else progress
    jobs = [(s, seed) for s in (specs or ctx.profile.model_specs()) for seed in ctx.profile.seeds_for(s)
            if seeds is None or seed in seeds]
    longest_first = sorted(jobs, key=lambda j: -cost(ctx, j[0]))  # fewer idle workers at the end
    fill(ctx, [(model_run, job) for job in longest_first], "models", progress, order=lambda job: order(ctx, job[1][0]))
    bar = tqdm(jobs, desc=f"{ctx.profile.name}: models", disable=not progress)
    out = []
    for spec, seed in bar:
        bar.set_postfix_str(f"{spec.label}, seed {seed}")
        out.append(model_run(ctx, spec, seed, progress=progress))
    return out


def cost(ctx: Context, spec: ModelSpec) -> float:
    """A model's training cost in forward-backward passes over one training image: epochs × images × (PGD steps + 1)."""
    c = ctx.profile.train_config(spec)
    return c.epochs * len(ctx.data.train_y) * (c.attack.steps + 1 if c.attack else 1)


def order(ctx: Context, spec: ModelSpec) -> schedule.Order:
    """Where a model stands in a job session's queue: the standard and main AT models first (the teachers and
    calibration targets that chapters 01, 03 and 04 wait on), then the longest first."""
    tier = schedule.CHAIN if spec in (STANDARD, ctx.profile.main_at) else schedule.BULK
    return tier, -cost(ctx, spec)


def model_record(ctx: Context, run: ModelRun) -> dict[str, Any]:
    """The ``summary.json`` entry of one model: its own threat model decides ``robust_acc``."""
    own = "l2" if run.spec.norm == "l2" else "linf"
    atk = ctx.profile.eval_attacks()[f"{own}_ce"]
    clean = run.logit_stats("clean")
    return {
        "name": run.name, "kind": run.spec.kind, "norm": run.spec.norm, "eps": run.spec.eps, "seed": run.seed,
        "clean_acc": run.acc("clean"),
        "robust_acc": {"pgd_ce": run.acc(f"{own}_ce"), "pgd_margin": run.acc(f"{own}_margin")},
        "attack": {"type": "pgd", "norm": own, "steps": atk.steps, "step_size": atk.step_size, "eps": atk.eps,
                   "restarts": atk.restarts, "eval_samples": len(run.labels)},
        "robust_acc_all": {k: run.acc(k) for k in run.logits if k != "clean"},
        "mean_max_logit": clean["mean_max_logit"], "mean_logit_gap": clean["mean_logit_gap"],
        "mean_centred_max_logit": clean["mean_centred_max_logit"],
        "attacked_linf_ce": run.logit_stats("linf_ce"),
        "train_seconds": run.train_seconds,
    }


LOGIT_STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # summary key -> per-sample statistic
    f"mean_{k}": fn for k, fn in stats.LOGIT_STATISTICS.items()}


def runs_of(runs: Sequence[ModelRun], spec: ModelSpec) -> list[ModelRun]:
    """The runs of one spec, ordered by seed."""
    return sorted((r for r in runs if r.spec == spec), key=lambda r: r.seed)
