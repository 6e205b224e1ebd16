"""Chapter 04's target ablations: pure, seeded functions from teacher logits to distillation targets.

Every ablation maps the teachers' logits on the training set (and the labels) to the *probabilities at
the distillation temperature T*, the thing the loss actually sees. Each one keeps some of the AT
teacher's information and destroys the rest (RESEARCH.md §5):

===================== ================================================ =============================================
ablation              keeps                                            destroys
===================== ================================================ =============================================
``full``              everything (softmax(z_AT / T))                   nothing
``standard_teacher``  (control) the standard teacher's outputs         the AT teacher
``standard_rescaled`` standard ordering (confidence ranking nearly)    standard mean confidence (set to AT's)
``hard_labels``       (control) the labels; trained with plain CE      every soft output
``uniform_nonmax``    argmax, top probability (exactly)                incorrect-class ordering and values
``shuffle_nonmax``    argmax, top probability, multiset of the rest    incorrect-class ordering (Kendall τ ≈ 0)
``uniform_confidence`` the full class ordering                         sample-wise confidence (top = population mean)
``smoothed_labels``   the label, AT's mean confidence                  sample-wise confidence, incorrect classes
``swap_confidence``   AT's full class ordering                         AT's sample-wise confidence (std's instead)
===================== ================================================ =============================================

Confidence is changed by a **per-sample temperature**: the logits z/T of a sample are multiplied by the
one factor s > 0 that gives the wanted top probability (bisection; the top probability is increasing in
s). This keeps the sample's whole class ordering and the ratios of its logit differences. Keeping the
ratios of the non-max *probabilities* instead cannot keep the ordering: when the top probability is
lowered, a strong runner-up rescaled by (1 − m)/(1 − p_max) can overtake it (``ratio_rescale_inverts``
counts how often).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from atlib.core.stats import spearman

Tensor = torch.Tensor


class UnknownAblationError(ValueError):
    """An ablation name that is not in ``ABLATIONS``; the message lists the valid ones."""


@dataclass(frozen=True)
class TeacherLogits:
    """The two teachers' logits on the same N training images, and the labels."""

    at: Tensor  # (N, K) AT teacher
    std: Tensor  # (N, K) standard teacher
    labels: Tensor  # (N,)

    def __post_init__(self) -> None:
        if self.at.ndim != 2 or self.at.shape != self.std.shape or self.labels.shape != self.at.shape[:1]:
            raise ValueError(f"teacher logits must be two (N, K) tensors and (N,) labels; got {tuple(self.at.shape)}, "
                             f"{tuple(self.std.shape)}, {tuple(self.labels.shape)}")
        if self.at.shape[1] < 3:
            raise ValueError(f"need at least 3 classes (K={self.at.shape[1]}): with 2 there are no incorrect classes to ablate")
        if not (torch.isfinite(self.at).all() and torch.isfinite(self.std).all()):
            raise ValueError("teacher logits contain NaN or inf")


def check_temperature(T: float) -> float:
    """``T`` as a float, or a clear error: it must be a finite number > 0."""
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not (0 < float(T) < float("inf")):
        raise ValueError(f"bad temperature T={T!r}: it must be a finite number > 0 (ARD uses T=30)")
    return float(T)


def soften(z: Tensor, T: float) -> Tensor:
    """softmax(z / T) in float64: the teacher's probabilities at temperature T."""
    return torch.softmax(z.double() / check_temperature(T), dim=1)


def top_prob(p: Tensor) -> Tensor:
    return p.max(dim=1).values


def match_top(z: Tensor, target: Tensor | float, iters: int = 80) -> Tensor:
    """softmax(s_i · z_i) with the per-sample s_i > 0 that makes its top probability ``target`` (bisection on
    log s). Keeps each sample's class ordering; a target outside (1/K, 1) is clipped just inside."""
    z = z.double()
    k = z.shape[1]
    tgt = torch.as_tensor(target, dtype=torch.float64).expand(z.shape[0]).clamp(1 / k + 1e-9, 1 - 1e-9)
    lo = torch.full((z.shape[0],), -40.0, dtype=torch.float64)
    hi = torch.full((z.shape[0],), 40.0, dtype=torch.float64)
    zc = z - z.max(dim=1, keepdim=True).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_high = top_prob(torch.softmax(zc * mid.exp()[:, None], dim=1)) > tgt
        hi, lo = torch.where(too_high, mid, hi), torch.where(too_high, lo, mid)
    return torch.softmax(zc * ((lo + hi) / 2).exp()[:, None], dim=1)


def global_scale_to_mean_top(z: Tensor, target_mean: float, iters: int = 80) -> float:
    """The one factor c > 0 with mean_i max softmax(c · z_i) = ``target_mean`` (bisection on log c)."""
    z = z.double()
    lo, hi = -40.0, 40.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if float(top_prob(torch.softmax(z * torch.exp(torch.tensor(mid)), dim=1)).mean()) > target_mean:
            hi = mid
        else:
            lo = mid
    return float(torch.exp(torch.tensor((lo + hi) / 2)))


def _nonmax_index(p: Tensor) -> Tensor:
    """(N, K−1) class indices other than each sample's argmax, in increasing class order."""
    n, k = p.shape
    idx = torch.arange(k).expand(n, k)
    keep = idx != p.argmax(dim=1, keepdim=True)
    return idx[keep].view(n, k - 1)


# ------------------------------------------------------------------------------------- the ablations
def full(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """The AT teacher's probabilities at T (ARD on clean inputs)."""
    return soften(t.at, T)


def standard_teacher(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """The standard teacher's probabilities at T (control: a teacher with no robustness)."""
    return soften(t.std, T)


def standard_rescaled(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """The standard teacher's logits times one global factor that brings its mean top probability at T
    to the AT teacher's: every sample's class ordering kept, the confidence ranking nearly (one temperature
    for all samples does not change every sample's top probability by the same amount), the mean moved."""
    m = float(top_prob(soften(t.at, T)).mean())
    c = global_scale_to_mean_top(t.std.double() / check_temperature(T), m)
    return torch.softmax(t.std.double() / T * c, dim=1)


def hard_labels(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """One-hot labels (control); the student is trained with plain cross-entropy, at no temperature."""
    check_temperature(T)
    return torch.nn.functional.one_hot(t.labels.long(), t.at.shape[1]).double()


def uniform_nonmax(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """AT's top probability kept (at its argmax), the remaining mass spread evenly over the other classes."""
    p = soften(t.at, T)
    top = p.max(dim=1, keepdim=True)
    out = ((1 - top.values) / (p.shape[1] - 1)).expand_as(p).clone()
    return out.scatter(1, top.indices, top.values)


def shuffle_nonmax(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """AT's non-max probabilities permuted among the non-max classes, one permutation per sample drawn
    from ``seed`` (computed once before training, so it is the same in every epoch)."""
    p = soften(t.at, T)
    n, k = p.shape
    src = _nonmax_index(p)
    perm = torch.rand(n, k - 1, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    return p.scatter(1, src, p.gather(1, src.gather(1, perm)))


def uniform_confidence(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """Each sample's ordering kept, its top probability set to the AT teacher's population mean at T
    (per-sample temperature, see the module docstring)."""
    m = float(top_prob(soften(t.at, T)).mean())
    return match_top(t.at.double() / check_temperature(T), m)


def smoothed_labels(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """Label smoothing whose label probability is the AT teacher's mean top probability at T."""
    m = float(top_prob(soften(t.at, T)).mean())
    k = t.at.shape[1]
    rest = (1 - m) / (k - 1)
    return torch.full(t.at.shape, rest, dtype=torch.float64).scatter(1, t.labels.long()[:, None], m)


def swap_confidence(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """AT's class ordering with the standard teacher's sample-wise confidence: each AT sample gets a
    per-sample temperature whose top probability equals that of ``standard_rescaled`` (the standard
    teacher brought to AT's mean confidence), so only *which* samples are confident changes."""
    target = top_prob(standard_rescaled(t, T, seed))
    return match_top(t.at.double() / check_temperature(T), target)


@dataclass(frozen=True)
class Ablation:
    """One target ablation: its function and what it keeps and destroys (for tables)."""

    name: str
    fn: Callable[[TeacherLogits, float, int], Tensor]
    keeps: str
    destroys: str
    plain_ce: bool = False  # trained with cross-entropy on the labels, T plays no role

    def __call__(self, t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
        return self.fn(t, check_temperature(T), seed)


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("full", full, "everything", "nothing"),
    Ablation("standard_teacher", standard_teacher, "a teacher's soft outputs (standard model)", "the AT teacher"),
    Ablation("standard_rescaled", standard_rescaled, "standard ordering, (nearly) its confidence ranking",
             "standard mean confidence (set to AT's)"),
    Ablation("hard_labels", hard_labels, "the labels", "all soft information", plain_ce=True),
    Ablation("uniform_nonmax", uniform_nonmax, "argmax, top probability", "incorrect-class values and ordering"),
    Ablation("shuffle_nonmax", shuffle_nonmax, "argmax, top probability, non-max values",
             "incorrect-class ordering"),
    Ablation("uniform_confidence", uniform_confidence, "class ordering", "sample-wise confidence"),
    Ablation("smoothed_labels", smoothed_labels, "label, mean confidence",
             "sample-wise confidence, incorrect classes, teacher argmax"),
    Ablation("swap_confidence", swap_confidence, "AT class ordering",
             "AT sample-wise confidence (standard's instead)"),
)}


def get_ablation(name: str) -> Ablation:
    """The ablation called ``name``; an unknown name raises an error listing the valid ones."""
    try:
        return ABLATIONS[name]
    except KeyError:
        raise UnknownAblationError(f"unknown ablation {name!r}; valid: {', '.join(ABLATIONS)}") from None


def targets(name: str, t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """The target probabilities of ablation ``name`` at temperature ``T`` (float64, rows sum to 1)."""
    return get_ablation(name)(t, T, seed)


# ------------------------------------------------------------------------- what an ablation keeps
def nonmax_kendall(reference: Tensor, ablated: Tensor) -> Tensor:
    """Per sample, Kendall's τ-a between the non-max probabilities of ``reference`` and of ``ablated`` at the
    same classes (non-max = all but the reference's argmax); 0 where one of them is constant."""
    idx = _nonmax_index(reference)
    a, b = reference.gather(1, idx), ablated.gather(1, idx)
    da = torch.sign(a[:, :, None] - a[:, None, :])
    db = torch.sign(b[:, :, None] - b[:, None, :])
    m = a.shape[1]
    return (da * db).sum(dim=(1, 2)) / (m * (m - 1))


def ratio_rescale_inverts(p: Tensor, m: float) -> float:
    """Fraction of samples whose argmax would change if the top probability were set to ``m`` and the
    non-max probabilities rescaled by (1 − m)/(1 − p_max) (the ratio-keeping construction)."""
    top = p.max(dim=1)
    rest = p.scatter(1, top.indices[:, None], -1.0).max(dim=1).values
    return float((rest * (1 - m) / (1 - top.values).clamp_min(1e-300) >= m).double().mean())


def properties(p: Tensor, t: TeacherLogits, T: float) -> dict[str, float]:
    """What a target keeps of the AT teacher at T: argmax agreement, label agreement, mean and spread of the
    top probability, Spearman ρ of the top probability with AT's and with std's, non-max Kendall τ with AT."""
    ref, std = soften(t.at, T), soften(t.std, T)
    top = top_prob(p)
    return {"argmax_eq_at": float((p.argmax(1) == ref.argmax(1)).double().mean()),
            "argmax_eq_label": float((p.argmax(1) == t.labels).double().mean()),
            "mean_top": float(top.mean()), "sd_top": float(top.std()),
            "rho_top_at": spearman(top, top_prob(ref)), "rho_top_std": spearman(top, top_prob(std)),
            "tau_nonmax_at": float(nonmax_kendall(ref, p).mean())}
