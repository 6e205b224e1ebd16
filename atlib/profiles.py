"""Every profile the book can run, in one place: dataset, model, schedule, threat models, seeds.

Settings follow the anchors' conventions (RESEARCH.md §3); the paper's own settings are not
available, so every one of these is a reconstruction, and the book says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .attacks import AttackConfig
from .train import TrainConfig

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
            linf_eps=0.1, linf_sweep=(0.0, 0.05, 0.1), l2_eps=0.5, train_steps=5, eval_steps=20),
    Profile("fashion", "Fashion-MNIST, a small stride-2 CNN, a 10k training subset and a fixed 1k evaluation "
            "subset: the default book, minutes on a 2-core CPU",
            dataset="fashion", arch="small_cnn", width=16, train_subset=10_000, eval_subset=1000, seeds=(0, 1, 2),
            epochs=6, batch_size=128, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.1, linf_sweep=(0.0, 0.05, 0.1), l2_eps=1.0, train_steps=5, eval_steps=20),
    Profile("mnist", "MNIST, a wider small CNN on the full training set, L∞ ε=0.3 (Madry et al.'s setting)",
            dataset="mnist", arch="small_cnn", width=32, train_subset=None, eval_subset=1000, seeds=(0, 1, 2),
            epochs=10, batch_size=128, lr=0.05, weight_decay=5e-4, augment=False,
            linf_eps=0.3, linf_sweep=(0.0, 0.15, 0.3), l2_eps=2.0, train_steps=10, eval_steps=40),
    Profile("cifar10", "CIFAR-10, PreActResNet-18 (CIFAR stem), PGD-10 L∞ 8/255 training: the paper's scale, "
            "for a GPU", dataset="cifar10", arch="preact_resnet18", width=64, train_subset=None, eval_subset=1000,
            seeds=(0, 1, 2), epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4, augment=True,
            linf_eps=8 / 255, linf_sweep=(0.0, 4 / 255, 8 / 255), l2_eps=0.5, train_steps=10, eval_steps=20,
            meant_for="gpu"),
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
