"""Every profile the book can run, in one place: dataset, model, schedule, threat models, seeds.

Settings follow the anchors' conventions (RESEARCH.md §3); the paper's own settings are not
available, so every one of these is a reconstruction, and the book says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from atlib.core.attacks import AttackConfig
from atlib.training.train import TrainConfig

DEFAULT_PROFILE = "fashion"


class UnknownProfileError(ValueError):
    """Raised for a profile name that is not defined here; the message lists the valid ones."""


@dataclass(frozen=True)
class ModelSpec:
    """One kind of model the book trains: standard (ε = 0) or PGD-AT under a norm and ε."""

    kind: str  # "standard" | "at"
    norm: str | None = None
    eps: float = 0.0

    @property
    def name(self) -> str:
        return "standard" if self.kind == "standard" else f"at_{self.norm}_{self.eps:.4g}"

    @property
    def label(self) -> str:
        if self.kind == "standard":
            return "standard"
        return f"AT {'L∞' if self.norm == 'linf' else 'L2'} ε={self.eps:.4g}"


@dataclass(frozen=True)
class DistillSettings:
    """Chapter 04 (distillation on clean inputs): the students, their schedule and the evaluation budget.

    ``lrs[i]`` is the peak learning rate at ``temperatures[i]``: T and lr are chosen together (the
    batchmean KL's gradient grows with T up to the centred logit difference / K). Students use the
    profile's architecture at ``student_width``, SGD as in ``train.train`` and the profile's weight decay.
    """

    temperatures: tuple[float, ...] = (4.0, 30.0)
    lrs: tuple[float, ...] = (0.02, 0.01)
    alpha: float = 1.0  # KL weight (ARD's default); the hard-label control is alpha = 0 (plain CE)
    student_width: int | None = 8  # None: the teachers' width
    epochs: int = 4
    batch_size: int = 128
    eval_subset: int = 500  # the first N of the profile's evaluation subset
    few_steps: int = 10  # PGD-CE steps of the "fewer steps" check
    many_steps: int = 50  # PGD-CE steps run on the PGD-20 survivors
    sweep_eps: tuple[float, ...] = (0.2, 0.3, 0.5)  # L∞ ε above the main one, attacked on survivors; ends at 0.5
    remove_margin: float = 0.10  # an ablation "removes" robustness if its paired drop exceeds this (CI > 0)
    equivalence_margin: float = 0.05  # ... and "keeps" it if the paired CI lies within ± this

    def __post_init__(self) -> None:
        if not self.temperatures or len(self.lrs) != len(self.temperatures):
            raise ValueError(f"need one lr per temperature: temperatures={self.temperatures}, lrs={self.lrs}")
        if any(not 0 < t < float("inf") for t in self.temperatures) or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"temperatures and lrs must be finite and > 0: {self.temperatures}, {self.lrs}")
        if not 0 <= self.alpha <= 1 or self.epochs < 1 or self.batch_size < 1 or self.eval_subset < 1:
            raise ValueError("bad distillation settings: alpha in [0, 1], epochs, batch_size, eval_subset >= 1")
        if not 0 < self.few_steps < self.many_steps:
            raise ValueError(f"need 0 < few_steps ({self.few_steps}) < many_steps ({self.many_steps})")
        if not self.sweep_eps or self.sweep_eps[-1] != 0.5 or list(self.sweep_eps) != sorted(set(self.sweep_eps)):
            raise ValueError(f"sweep_eps={self.sweep_eps!r} must increase and end at L∞ 0.5 (where accuracy must be at chance)")
        if not (0 < self.equivalence_margin <= self.remove_margin):
            raise ValueError(f"need 0 < equivalence_margin ({self.equivalence_margin}) <= remove_margin "
                             f"({self.remove_margin})")

    def lr_at(self, T: float) -> float:
        """The learning rate chosen for temperature ``T``."""
        for t, lr in zip(self.temperatures, self.lrs):
            if t == T:
                return lr
        raise ValueError(f"T={T!r} is not one of this profile's temperatures {self.temperatures}")


@dataclass(frozen=True)
class Profile:
    """A complete, named experimental setting."""

    name: str
    description: str
    dataset: str
    arch: str
    width: int | None
    train_subset: int | None  # first N of a fixed permutation of the training set; None = all
    eval_subset: int | None  # fixed subset of the test set used for every attack; None = all
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool
    linf_eps: float  # the main L∞ threat model, for training and evaluation
    linf_sweep: tuple[float, ...]  # training ε of the L∞ sweep; 0 is the standard model
    l2_eps: float
    train_steps: int
    eval_steps: int
    meant_for: str = "cpu"
    pool_jobs: bool = True  # CPU: train independent models in worker processes (atlib.training.pool); off where jobs take ~1 s
    fast: bool = False  # on CUDA: train with atlib's fast path (bf16 autocast, channels_last, fused SGD, compile)
    distill: DistillSettings = DistillSettings()  # chapter 04

    def with_seeds(self, seeds: tuple[int, ...] | list[int]) -> "Profile":
        return replace(self, seeds=tuple(int(s) for s in seeds))

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
                           augment=self.augment, attack=attack)

    def eval_attacks(self) -> dict[str, AttackConfig]:
        """PGD with CE and margin losses under both threat models, random start, step size decayed from
        ε/2 to 0 on a half cosine (chapter 05: a fixed 2.5·ε/steps step left APGD >2 pp ahead on a model)."""
        return {
            "linf_ce": AttackConfig.cosine("linf", self.linf_eps, self.eval_steps),
            "linf_margin": AttackConfig.cosine("linf", self.linf_eps, self.eval_steps, loss="margin"),
            "l2_ce": AttackConfig.cosine("l2", self.l2_eps, self.eval_steps),
            "l2_margin": AttackConfig.cosine("l2", self.l2_eps, self.eval_steps, loss="margin"),
        }


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("smoke", "scikit-learn's bundled 8×8 digits and a small MLP: the whole book in seconds, for tests",
            dataset="digits", arch="mlp", width=64, train_subset=None, eval_subset=None, seeds=(0, 1),
            epochs=20, batch_size=64, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.1, linf_sweep=(0.0, 0.05, 0.1), l2_eps=0.5, train_steps=5, eval_steps=20,
            pool_jobs=False,  # each job ~1 s, a worker's start ~4 s: measured slower pooled
            distill=DistillSettings(student_width=32, epochs=6, batch_size=128, lrs=(0.03, 0.015), eval_subset=200)),
    Profile("fashion", "Fashion-MNIST, a small stride-2 CNN, a 10k training subset and a fixed 1k evaluation "
            "subset: the default book, minutes on a 2-core CPU",
            dataset="fashion", arch="small_cnn", width=16, train_subset=10_000, eval_subset=1000, seeds=(0, 1, 2),
            epochs=6, batch_size=128, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.1, linf_sweep=(0.0, 0.05, 0.1), l2_eps=1.0, train_steps=5, eval_steps=20),
    Profile("mnist", "MNIST, a wider small CNN on the full training set, L∞ ε=0.3 (Madry et al.'s setting)",
            dataset="mnist", arch="small_cnn", width=32, train_subset=None, eval_subset=1000, seeds=(0, 1, 2),
            epochs=10, batch_size=128, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.3, linf_sweep=(0.0, 0.15, 0.3), l2_eps=2.0, train_steps=10, eval_steps=40,
            distill=DistillSettings(student_width=16, epochs=6, sweep_eps=(0.4, 0.5))),
    Profile("cifar10", "CIFAR-10, PreActResNet-18 (CIFAR stem), PGD-10 L∞ 8/255 training: the paper's scale, "
            "for a GPU", dataset="cifar10", arch="preact_resnet18", width=64, train_subset=None, eval_subset=1000,
            seeds=(0, 1, 2), epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, augment=True,
            linf_eps=8 / 255, linf_sweep=(0.0, 4 / 255, 8 / 255), l2_eps=0.5, train_steps=10, eval_steps=20,
            meant_for="gpu", fast=True, distill=DistillSettings(student_width=32, epochs=20, sweep_eps=(16 / 255, 0.1, 0.5))),
)}


def get_profile(name: str | Profile) -> Profile:
    """The profile called ``name``; an unknown name raises an error listing the valid ones."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)} "
                                  f"(default: {DEFAULT_PROFILE})") from None
