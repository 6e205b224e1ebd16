"""Every profile the book can run, in one place: dataset, model, schedule, threat models, seeds.

Settings follow the conventions of the adversarial-robustness literature; the paper's own settings are not
available, so every one of these is a reconstruction, and the book says so (pages/intro.md, "What is a
reconstruction").
"""
from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from atlib.core.attacks import AttackConfig
from atlib.core.config import ConfigError, from_table, to_toml
from atlib.core.data import DATASETS
from atlib.core.models import ARCHS
from atlib.core.runtime import PRECISIONS
from atlib.studies.audit.settings import AuditSettings
from atlib.studies.confidence.settings import ConfidenceSettings
from atlib.studies.distillation.settings import DistillSettings
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.theory.settings import DeepSettings, GaussianSettings, LinearSettings, TheorySettings
from atlib.training.train import TrainConfig

DEFAULT_PROFILE = "fashion"


class UnknownProfileError(ConfigError):
    """A profile name that is not defined here, or a profile file that cannot be used; the message says why
    and lists the valid names."""


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A complete, named experimental setting: chapter 02's models at the top level, every other chapter's
    settings nested under its name (``theory``, ``confidence``, ``distill``, ``audit``). Nothing in atlib looks
    a setting up by profile name: a derived profile (``dataclasses.replace`` or a TOML file, see
    :mod:`atlib.studies.profile_file`) runs the whole book."""

    name: str  # names the results (results/<name>/) and the build folder
    description: str  # one line for the book's pages
    dataset: str  # one of atlib.core.data.DATASETS
    arch: str  # one of atlib.core.models.ARCHS
    width: int | None  # channels (CNN) or hidden units (MLP); None: the architecture's default
    train_subset: int | None  # first N of a fixed permutation of the training set; None = all
    eval_subset: int | None  # fixed subset of the test set used for every attack; None = all
    seeds: tuple[int, ...]  # the standard and main AT models' seeds (chapter 03's units), and chapter 04's students'
    epochs: int  # every chapter-02 model's training epochs
    batch_size: int
    lr: float  # peak of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    weight_decay: float
    augment: bool  # random crop and flip during training
    linf_eps: float  # the main L∞ threat model, for training and evaluation
    linf_sweep: tuple[float, ...]  # training ε of the L∞ sweep; 0 is the standard model
    l2_eps: float  # the L2 threat model: L2-AT and the L2 evaluation attacks
    train_steps: int  # PGD steps of AT training (step 2.5·ε/steps, random start)
    eval_steps: int  # PGD steps of the evaluation attacks (step decayed from ε/2 on a half cosine, random start)
    eps_fadein_epochs: int  # AT: ε and its PGD step ramp linearly from 0 over these first epochs (0: none)
    meant_for: str  # "cpu" or "gpu"
    side_seeds: int | None  # the first N seeds train all but the main models, matched controls and students (None: all)
    pool_jobs: bool  # CPU: train independent models in worker processes (atlib.training.pool); off where jobs take ~1 s
    fast: bool  # on CUDA: train with atlib's fast path (bf16 autocast, channels_last, fused SGD, compile)
    precision: str  # training steps: "fp32", or "bf16" (autocast) where the device has native bf16, else fp32
    theory: TheorySettings  # chapter 01
    confidence: ConfidenceSettings  # chapter 03
    distill: DistillSettings  # chapter 04
    audit: AuditSettings  # chapter 05

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS or self.arch not in ARCHS or self.meant_for not in ("cpu", "gpu"):
            raise ValueError(f"dataset={self.dataset!r} (one of {', '.join(DATASETS)}), arch={self.arch!r} (one of "
                             f"{', '.join(ARCHS)}), meant_for={self.meant_for!r} (cpu or gpu)")
        counts = {"epochs": self.epochs, "batch_size": self.batch_size, "train_steps": self.train_steps,
                  "eval_steps": self.eval_steps, "width": self.width or 1, "train_subset": self.train_subset or 1,
                  "eval_subset": self.eval_subset or 1}
        if bad := {k: v for k, v in counts.items() if v < 1}:
            raise ValueError(f"{bad}: each must be a whole number >= 1" + " (or \"none\": all)" * ("subset" in str(bad)))
        if bad := self._bad_values():
            raise ValueError("; ".join(bad))
        if self.distill.sweep_eps[0] <= self.linf_eps:
            raise ValueError(f"distill.sweep_eps={self.distill.sweep_eps} must start above the profile's "
                             f"L∞ ε (linf_eps={self.linf_eps})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds!r}: need at least one seed, each once")
        if not 0 <= self.eps_fadein_epochs <= self.epochs:
            raise ValueError(f"eps_fadein_epochs={self.eps_fadein_epochs!r}: between 0 and epochs={self.epochs}")
        if self.side_seeds is not None and not 1 <= self.side_seeds <= len(self.seeds):
            raise ValueError(f"side_seeds={self.side_seeds!r}: between 1 and len(seeds)={len(self.seeds)}, or \"none\"")

    def _bad_values(self) -> list[str]:
        """What is wrong with the schedule's and the threat models' numbers and the precision, one entry per key
        (TOML spelling).
        Images are in [0, 1]: an L∞ ε lies in [0, 1] and an L2 ε is at most the images' diameter (the registry's
        sqrt(C·H·W), black to white); beyond either every image is reachable."""
        shape, diameter, sweep = DATASETS[self.dataset].shape, DATASETS[self.dataset].diameter, self.linf_sweep
        precisions = ", ".join(f'"{q}"' for q in PRECISIONS)
        checks = (("lr", self.lr, 0 < self.lr < math.inf, "the learning rate must be finite and > 0"),
                  ("weight_decay", self.weight_decay, 0 <= self.weight_decay < math.inf, "must be finite and >= 0"),
                  ("linf_eps", self.linf_eps, 0 < self.linf_eps <= 1,
                   "the main L∞ ε must lie in (0, 1]: the images' pixels are in [0, 1]"),
                  ("linf_sweep", list(sweep), bool(sweep) and all(0 <= e <= 1 for e in sweep),
                   "need at least one L∞ ε, each in [0, 1] (the images' pixels are in [0, 1]; 0 is the standard model)"),
                  ("l2_eps", self.l2_eps, 0 < self.l2_eps <= diameter,
                   f"an L2 ε must be > 0 and at most the diameter of the {self.dataset} images, sqrt(C·H·W) = "
                   f"sqrt({'·'.join(map(str, shape))}) = {diameter:.4g} (black to white)"),
                  ("precision", f'"{self.precision}"', self.precision in PRECISIONS,
                   f"one of {precisions} (bf16: autocast for the training steps where the device has native bf16, "
                   f"else fp32; every evaluation is float32)"))
        return [f"{key} = {value}: {why}" for key, value, ok, why in checks if not ok]

    def with_seeds(self, seeds: tuple[int, ...] | list[int]) -> "Profile":
        """This profile with other seeds (``side_seeds`` capped at their number)."""
        seeds = tuple(int(s) for s in seeds)
        side = None if self.side_seeds is None else min(self.side_seeds, len(seeds))
        return replace(self, seeds=seeds, side_seeds=side)

    @property
    def side_seed_list(self) -> tuple[int, ...]:
        """Seeds of the side experiments: the ε sweep, L2-AT, chapter 01's controls, chapter 04's students."""
        return self.seeds if self.side_seeds is None else self.seeds[:self.side_seeds]

    def seeds_for(self, spec: ModelSpec) -> tuple[int, ...]:
        """Every seed for the standard and main AT models (chapters 02–03's k), the side seeds for the rest."""
        return self.seeds if spec in (ModelSpec("standard"), self.main_at) else self.side_seed_list

    def model_specs(self) -> tuple[ModelSpec, ...]:
        """Standard, L∞-AT at every nonzero ε of the sweep, and L2-AT."""
        specs = [ModelSpec("standard")]
        specs += [ModelSpec("at", "linf", e) for e in self.linf_sweep if e > 0]
        specs.append(ModelSpec("at", "l2", self.l2_eps))
        return tuple(specs)

    @property
    def main_at(self) -> ModelSpec:
        return ModelSpec("at", "linf", self.linf_eps)

    def train_config(self, spec: ModelSpec) -> TrainConfig:
        attack = None
        if spec.kind == "at":
            attack = AttackConfig.madry(spec.norm or "linf", spec.eps, self.train_steps, keep_best=False)
        return TrainConfig(self.epochs, self.batch_size, self.lr, weight_decay=self.weight_decay,
                           augment=self.augment, attack=attack,
                           eps_fadein_epochs=self.eps_fadein_epochs if attack is not None else 0)

    def eval_attacks(self) -> dict[str, AttackConfig]:
        """PGD with CE and margin losses under both threat models, random start, step size decayed from
        ε/2 to 0 on a half cosine (chapter 05: a fixed 2.5·ε/steps step left APGD >2 pp ahead on a model)."""
        return {
            "linf_ce": AttackConfig.cosine("linf", self.linf_eps, self.eval_steps),
            "linf_margin": AttackConfig.cosine("linf", self.linf_eps, self.eval_steps, loss="margin"),
            "l2_ce": AttackConfig.cosine("l2", self.l2_eps, self.eval_steps),
            "l2_margin": AttackConfig.cosine("l2", self.l2_eps, self.eval_steps, loss="margin"),
        }


# Every built-in profile spells every setting (no dataclass has a default), so what a profile runs is on its page.
# Chapter 01's control grids: two or three strengths per control (two on fashion, for time), spread around the
# strength a rough argument predicts for the AT model's gap (temperature T ≈ gap_AT / gap_std; label smoothing's
# optimal gap log((1-α+α/K)/(α/K))).
SMOKE_GRIDS = (("label_smoothing", (0.002, 0.01, 0.03)), ("logit_squeeze", (0.0001, 0.0005, 0.002)),
               ("loss_temperature", (0.6, 0.8, 0.95)))
FASHION_GRIDS = (("label_smoothing", (0.1, 0.25)), ("logit_squeeze", (0.02, 0.08)), ("loss_temperature", (0.3, 0.5)))
WIDE_GRIDS = (("label_smoothing", (0.1, 0.25, 0.5)), ("logit_squeeze", (0.005, 0.02, 0.08)),
              ("loss_temperature", (0.3, 0.5, 0.7)))  # mnist and cifar10 (untested)
# Chapter 01's two Gaussian classes: the smoke profile's smaller problem, and everyone else's
SMOKE_GAUSSIAN = GaussianSettings(dim=10, mu_norm=1.0, sigma=0.75, n_train=3000, n_test=3000, steps=500, lr=1.0,
                                  eps_sweep=(0.0, 0.2, 0.4, 0.6, 0.8))
GAUSSIAN = GaussianSettings(dim=10, mu_norm=1.0, sigma=0.75, n_train=10_000, n_test=10_000, steps=700, lr=1.0,
                            eps_sweep=(0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9))
# 5000 training images no model trains on (the profile trains on the rest) select the matched control
HELD_OUT_CONFIDENCE = ConfidenceSettings(select_on="holdout", holdout=5000, topk=(10, 50, 100), n_show=8, group_size=50,
                                         grid_min=500, calib_seeds=2)
MASKING_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)  # chapter 05's L∞ sweep of the masking checks, ending where all is grey

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(name="smoke", description="scikit-learn's bundled 8×8 digits and a small MLP: the smallest whole book, "
            "for tests",
            dataset="digits", arch="mlp", width=64, train_subset=None, eval_subset=None, seeds=(0, 1, 2, 3), side_seeds=2,
            epochs=20, batch_size=64, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.1, linf_sweep=(0.0, 0.05, 0.1), l2_eps=0.5, train_steps=5, eval_steps=20, meant_for="cpu",
            eps_fadein_epochs=0,
            pool_jobs=False,  # each job ~1 s, a worker's start ~4 s: measured slower pooled
            fast=False, precision="fp32",
            theory=TheorySettings(
                linear=LinearSettings(n_train=1000, epochs=8, batch_size=200, lr=0.2, weight_decay=5e-4,
                                      eps_sweep=(0.0, 0.05, 0.1, 0.2, 0.3), pgd_steps=5, check_n=200, check_steps=20,
                                      bound_steps=50),
                deep=DeepSettings(n_flip=100, flip_steps=10, bisect_iters=7, eps_max=0.5, n_calib=500,
                                  grids=SMOKE_GRIDS),
                gaussian=SMOKE_GAUSSIAN),
            confidence=ConfidenceSettings(select_on="train", holdout=0, topk=(10, 50), n_show=8, group_size=30,
                                          grid_min=50, calib_seeds=2),  # no spare images
            distill=DistillSettings(temperatures=(4.0, 30.0), lrs=(0.03, 0.015), alpha=1.0, student_width=32, epochs=6,
                                    batch_size=128, eval_subset=200, few_steps=10, many_steps=50,
                                    sweep_eps=(0.2, 0.3, 0.5), apgd_steps=20, square_queries=1000, square_subset=100),
            # chapter 04's students of the first seed only (every recipe), for the book's time budget
            audit=AuditSettings(main_subset=None, masking_subset=200, apgd_steps=20, apgd_restarts=1,
                                linf_grid=MASKING_GRID, sweep_steps=20, few_steps=10, many_steps=50, restarts=5,
                                diagnose_max=3, student_seeds=1, batch_size=500)),
    Profile(name="fashion", description="Fashion-MNIST, a small stride-2 CNN, a 10k training subset and a fixed "
            "1k evaluation subset: the default book, for a CPU (26 min from an empty cache on 2 idle cores)",
            dataset="fashion", arch="small_cnn", width=16, train_subset=10_000, eval_subset=1000,
            seeds=(0, 1, 2, 3, 4, 5), side_seeds=3,
            epochs=24,  # converged: results/fashion/pilot_convergence.json (python -m atlib pilot convergence)
            batch_size=128, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.1, linf_sweep=(0.0, 0.05, 0.1), l2_eps=1.0, train_steps=5, eval_steps=20, meant_for="cpu",
            pool_jobs=True, fast=False, precision="bf16",
            eps_fadein_epochs=0,  # ε = 0.1 does not collapse: every AT model of the published book passes the gates
            theory=TheorySettings(
                linear=LinearSettings(n_train=2000, epochs=6, batch_size=200, lr=0.05, weight_decay=5e-4,
                                      eps_sweep=(0.0, 0.05, 0.1, 0.15, 0.2), pgd_steps=5, check_n=200, check_steps=20,
                                      bound_steps=50),
                deep=DeepSettings(n_flip=200, flip_steps=10, bisect_iters=8, eps_max=0.5, n_calib=1000,
                                  grids=FASHION_GRIDS),
                gaussian=GAUSSIAN),
            confidence=ConfidenceSettings(select_on="holdout", holdout=5000, topk=(10, 50, 100), n_show=8,
                                          group_size=50, grid_min=100, calib_seeds=2),
            # T and lr chosen together by the development pilot (chapter 04); epochs: checked by the convergence pilot
            distill=DistillSettings(temperatures=(4.0, 30.0), lrs=(0.02, 0.01), alpha=1.0, student_width=8, epochs=8,
                                    batch_size=128, eval_subset=500, few_steps=10, many_steps=50,
                                    sweep_eps=(0.2, 0.3, 0.5), apgd_steps=25, square_queries=1000, square_subset=100),
            # chapter 04's students of the first seed only (every recipe), for the book's time budget
            audit=AuditSettings(main_subset=1000, masking_subset=500, apgd_steps=25, apgd_restarts=1,
                                linf_grid=MASKING_GRID, sweep_steps=20, few_steps=10, many_steps=50, restarts=3,
                                diagnose_max=3, student_seeds=1, batch_size=500)),
    Profile(name="mnist", description="MNIST, a wider small CNN on 55k training images (5k held out), L∞ ε=0.3 "
            "(Madry et al.'s setting)",
            dataset="mnist", arch="small_cnn", width=32, train_subset=55_000, eval_subset=1000,
            seeds=(0, 1, 2, 3, 4, 5),
            side_seeds=3,  # 5000 training images held out to select chapter 03's matched control
            epochs=10, batch_size=128, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.3, linf_sweep=(0.0, 0.15, 0.3), l2_eps=2.0, train_steps=10, eval_steps=40, meant_for="cpu",
            pool_jobs=True, fast=False, precision="fp32",
            # ε = 0.3 from the first step collapses small CNNs to a constant; a linear ε fade-in (MadryLab robustness'
            # eps_fadein_epochs) over the first 3 of 10 epochs: a reconstruction, the length that cured the same
            # collapse on Fashion-MNIST at ε = 0.3 (README, "Validity gates"); not measured on MNIST here
            eps_fadein_epochs=3,
            theory=TheorySettings(
                linear=LinearSettings(n_train=5000, epochs=10, batch_size=200, lr=0.05, weight_decay=5e-4,
                                      eps_sweep=(0.0, 0.05, 0.1, 0.2, 0.3), pgd_steps=10, check_n=200, check_steps=20,
                                      bound_steps=50),
                deep=DeepSettings(n_flip=200, flip_steps=20, bisect_iters=8, eps_max=0.5, n_calib=1000,
                                  grids=WIDE_GRIDS),
                gaussian=GAUSSIAN),
            confidence=HELD_OUT_CONFIDENCE,
            distill=DistillSettings(temperatures=(4.0, 30.0), lrs=(0.02, 0.01), alpha=1.0, student_width=16, epochs=6,
                                    batch_size=128, eval_subset=500, few_steps=10, many_steps=50, sweep_eps=(0.4, 0.5),
                                    apgd_steps=100, square_queries=1000, square_subset=100),
            audit=AuditSettings(main_subset=1000, masking_subset=500, apgd_steps=100, apgd_restarts=1,
                                linf_grid=MASKING_GRID, sweep_steps=20, few_steps=10, many_steps=50, restarts=5,
                                diagnose_max=3, student_seeds=None, batch_size=500)),
    Profile(name="cifar10", description="CIFAR-10, PreActResNet-18 (CIFAR stem), PGD-10 L∞ 8/255 training: the "
            "paper's scale, for a GPU",
            dataset="cifar10", arch="preact_resnet18", width=64, train_subset=45_000, eval_subset=1000,
            seeds=(0, 1, 2, 3, 4, 5), side_seeds=3,  # 5000 training images held out to select the matched control
            epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, augment=True,
            linf_eps=8 / 255, linf_sweep=(0.0, 4 / 255, 8 / 255), l2_eps=0.5, train_steps=10, eval_steps=20,
            eps_fadein_epochs=0,  # PGD-AT at 8/255 trains from full ε (Madry et al. 2018; Rice et al. 2020)
            meant_for="gpu", pool_jobs=True, fast=True,
            precision="fp32",  # on CUDA the fast path trains under bf16 autocast whatever this says
            theory=TheorySettings(
                linear=LinearSettings(n_train=5000, epochs=10, batch_size=200, lr=0.02, weight_decay=5e-4,
                                      eps_sweep=(0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255), pgd_steps=10, check_n=200,
                                      check_steps=20, bound_steps=50),
                deep=DeepSettings(n_flip=500, flip_steps=20, bisect_iters=10, eps_max=32 / 255, n_calib=2000,
                                  grids=WIDE_GRIDS),
                gaussian=GAUSSIAN),
            confidence=HELD_OUT_CONFIDENCE,
            distill=DistillSettings(temperatures=(4.0, 30.0), lrs=(0.02, 0.01), alpha=1.0, student_width=32, epochs=20,
                                    batch_size=128, eval_subset=500, few_steps=10, many_steps=50,
                                    sweep_eps=(16 / 255, 0.1, 0.5), apgd_steps=100, square_queries=1000,
                                    square_subset=100),
            audit=AuditSettings(main_subset=1000, masking_subset=500, apgd_steps=100, apgd_restarts=1,
                                linf_grid=MASKING_GRID, sweep_steps=20, few_steps=10, many_steps=50, restarts=5,
                                diagnose_max=3, student_seeds=None, batch_size=500)),
)}


def get_profile(name: str | os.PathLike | Profile) -> Profile:
    """The profile ``name``: a built-in one by name, or a TOML profile file (``*.toml``, see
    :func:`load_profile`); an unknown name raises an error listing the valid ones."""
    if isinstance(name, Profile):
        return name
    if str(name).endswith(".toml") or Path(name).is_file():
        return load_profile(name)
    try:
        return PROFILES[str(name)]
    except KeyError:
        raise UnknownProfileError(f"unknown profile {str(name)!r}; valid profiles: {', '.join(PROFILES)} "
                                  f"(default: {DEFAULT_PROFILE}), or a TOML profile file (*.toml)") from None


def load_profile(path: str | os.PathLike) -> Profile:
    """A profile from a TOML file: ``extends = "<built-in profile>"`` and any overrides in the nesting of
    :class:`Profile` (top-level keys for chapter 02, ``[theory.linear]``, ``[confidence]``, ``[distill]``,
    ``[audit]`` ...); without ``extends`` the file must give every setting (as :func:`profile_toml` writes).
    ``name`` defaults to the file's stem. Unknown keys, wrong types and bad values raise
    :class:`UnknownProfileError` naming the key and what it accepts."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnknownProfileError(f"profile file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UnknownProfileError(f"profile file {path} is not valid TOML: {e}") from None
    base_name = doc.pop("extends", None)
    if base_name is not None and (not isinstance(base_name, str) or base_name not in PROFILES):
        raise UnknownProfileError(f"{path}: extends = {base_name!r} is not a built-in profile; valid: "
                                  f"{', '.join(map(repr, PROFILES))} (one name, as a string)")
    doc.setdefault("name", path.stem)
    try:
        p = from_table(Profile, doc, PROFILES[base_name] if base_name else None)
    except ConfigError as e:
        raise UnknownProfileError(f"profile file {path}: {e}") from None
    check_own_name(p, f"profile file {path}")
    return p


_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_own_name(p: Profile, what: str = "profile") -> None:
    """A profile's name names its folders (``_build/books/<name>/``, ``results/<name>/``, and ``book/`` for the
    default): it must be a plain folder name, and a built-in profile's name only for that built-in's own settings,
    so that no other profile can write a built-in's published book or recorded results. UnknownProfileError if not."""
    if not isinstance(p.name, str) or not _FOLDER_NAME.fullmatch(p.name):
        raise UnknownProfileError(f"{what}: name = {p.name!r} cannot name a folder; use letters, digits, '_', '-' "
                                  f"and '.' (not first)")
    builtin = PROFILES.get(p.name)
    if builtin is not None and builtin != p:
        ours, theirs = asdict(p), asdict(builtin)
        differ = [k for k in ours if ours[k] != theirs[k]]
        raise UnknownProfileError(f"{what}: name = {p.name!r} is the built-in profile's, but the settings differ "
                                  f"({', '.join(differ)}); a profile of your own needs a name of its own (its book "
                                  f"and recorded results are kept under it): set name = \"...\" or rename the file")


def profile_toml(p: Profile) -> str:
    """Every setting of ``p`` as a TOML profile file (no ``extends``): :func:`load_profile` reads it back equal."""
    return to_toml(p, f"atbook profile {p.name!r}: every setting, resolved (python -m atlib book --profile FILE)")
