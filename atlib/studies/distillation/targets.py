"""Chapter 04's target ablations: pure, seeded functions from teacher logits to distillation targets.

Every ablation maps the teachers' logits on the training set (and the labels) to the *probabilities at
the distillation temperature T*, the thing the loss actually sees. Each one keeps some of the AT
teacher's information and destroys the rest (RESEARCH.md §5); :data:`ABLATIONS` holds each with its target,
what it keeps and destroys and what decides its meaning (chapter 04 prints that table from it).

``class_permuted_nonmax`` moves the non-max probabilities of every sample whose top class is c by one fixed
permutation π_c of the other K−1 classes (drawn per seed), so the target stays a learnable function of the input.
π_c is a *derangement* (no class keeps its own probability): a uniformly random permutation of 9 classes leaves
one in place on average, and with it part of the information the ablation is meant to remove.
The ``_tail`` ablations keep the two largest probabilities and their classes and change only the other K−2.

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


def _derangement(n: int, g: torch.Generator) -> Tensor:
    """A uniformly random permutation of range(n) with no fixed point (rejection: ~1/e of draws are)."""
    while True:
        perm = torch.randperm(n, generator=g)
        if bool((perm != torch.arange(n)).all()):
            return perm


def class_maps(k: int, seed: int) -> Tensor:
    """(K, K): row c is the class map of samples whose top class is c; it fixes c and sends the other K−1
    classes through a derangement π_c drawn from ``seed`` (the same maps at every T and epoch)."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.arange(k).repeat(k, 1)
    for c in range(k):
        others = torch.cat([torch.arange(c), torch.arange(c + 1, k)])
        maps[c, others] = others[_derangement(k - 1, g)]
    return maps


def class_permuted_nonmax(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """AT's probabilities with the non-max ones moved by the fixed map of the sample's top class: class j's
    probability goes to class π_c(j). Every value is kept and the target is still a function of the input;
    which classes are the close rivals is not."""
    p = soften(t.at, T)
    dest = class_maps(p.shape[1], seed)[p.argmax(dim=1)]
    return torch.zeros_like(p).scatter(1, dest, p)


def _tail_index(p: Tensor) -> Tensor:
    """(N, K−2) class indices other than each sample's two largest probabilities, in increasing class order."""
    n, k = p.shape
    idx = torch.arange(k).expand(n, k)
    top2 = p.topk(2, dim=1).indices
    keep = (idx != top2[:, :1]) & (idx != top2[:, 1:])
    return idx[keep].view(n, k - 2)


def uniform_tail(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """AT's top-1 and top-2 classes and probabilities kept; the other K−2 share the remaining mass evenly."""
    p = soften(t.at, T)
    tail = _tail_index(p)
    rest = (1 - p.topk(2, dim=1).values.sum(dim=1, keepdim=True)) / tail.shape[1]
    return p.scatter(1, tail, rest.expand_as(tail).contiguous())


def shuffle_tail(t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
    """AT's top-1 and top-2 kept; the other K−2 probabilities permuted among their classes, one permutation per
    sample drawn from ``seed`` (once, before training)."""
    p = soften(t.at, T)
    n, m = p.shape[0], p.shape[1] - 2
    src = _tail_index(p)
    perm = torch.rand(n, m, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
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
    """One target ablation: its function, its target in symbols, what it keeps and destroys, and what decides its
    meaning (for chapter 04's table; MyST Markdown, $math$ allowed)."""

    name: str
    fn: Callable[[TeacherLogits, float, int], Tensor]
    target: str
    keeps: str
    destroys: str
    group: str  # one of GROUPS: what the ablation changes
    note: str = ""  # what decides what the ablation means, where that is not obvious from the columns
    plain_ce: bool = False  # trained with cross-entropy on the labels, T plays no role

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"ablation {self.name!r}: group {self.group!r} is not one of {', '.join(GROUPS)}")

    def __call__(self, t: TeacherLogits, T: float, seed: int = 0) -> Tensor:
        return self.fn(t, check_temperature(T), seed)


# what an ablation changes: nothing (the reference), the teacher, everything soft (controls), the incorrect
# classes (top class and its probability kept), or the sample-wise confidence (the class ordering kept)
GROUPS = ("reference", "teacher", "control", "incorrect classes", "confidence")
_PERMUTED = "drawn once, from the student's seed before training, and kept for every epoch (re-drawn each epoch, " \
            "the targets would average back to the flattened one)"
_RESCALED = ("confidence is changed by a per-sample temperature: the sample's logits $z/T$ are multiplied by the one "
             "factor $s_i > 0$ that gives the wanted top probability (bisection; the top probability increases with "
             "$s_i$), which keeps the sample's whole class ordering and the ratios of its logit differences; keeping "
             "the ratios of the non-max *probabilities* instead can invert the ordering (the count is printed below)")

ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("full", full, "$p$", "everything", "nothing", "reference"),
    Ablation("standard_teacher", standard_teacher, "$\\mathrm{softmax}(z_{\\text{std}}/T)$",
             "a teacher's soft outputs", "the AT teacher", "teacher"),
    Ablation("standard_rescaled", standard_rescaled,
             "$\\mathrm{softmax}(\\lambda z_{\\text{std}}/T)$, one $\\lambda$ for all samples with mean top probability $m$",
             "standard ordering, (nearly) its confidence ranking", "standard mean confidence", "teacher"),
    Ablation("hard_labels", hard_labels, "one-hot $y$, trained with plain CE", "the labels", "all soft information",
             "control", note="involves no temperature: its students are the same at every $T$ and appear once per $T$ "
             "in the tables, compared with that $T$'s full students", plain_ce=True),
    Ablation("uniform_nonmax", uniform_nonmax, "$p_c$ at $c$, $(1 - p_c)/(K-1)$ elsewhere", "argmax, confidence",
             "incorrect-class values and ordering; **widens the runner-up gap**", "incorrect classes",
             note="flattens the non-max *probabilities*, not the logits: averaging the non-max logits would raise "
             "$p_c$ and so change the confidence as well; this keeps $p_c$ exactly. It does *not* keep the margin: at "
             "the mean top probability the flattened runner-up lies $T \\ln\\!\\big((K-1)\\,p_c/(1-p_c)\\big)$ below the "
             "top, more than the full target's gap (the property table below measures both)"),
    Ablation("shuffle_nonmax", shuffle_nonmax, "$p_c$ at $c$, the other $p_j$ permuted per sample",
             "argmax, confidence, the multiset of non-max values (so the gap)",
             "which class is the runner-up; the target of a rival is no longer a function of the input",
             "incorrect classes", note=f"one permutation per sample, {_PERMUTED}"),
    Ablation("class_permuted_nonmax", class_permuted_nonmax,
             "$p_c$ at $c$; the non-max values moved by one fixed derangement $\\pi_c$ of the other $K-1$ classes per "
             "top class $c$", "every value: confidence, runner-up gap, entropy; a learnable function of the input",
             "**which classes are the close rivals**", "incorrect classes",
             note=f"one derangement per top class, {_PERMUTED}. A *derangement* moves every class: a uniformly random "
             "permutation of the $K-1$ classes leaves one in place on average, and with it part of the information "
             "the ablation removes"),
    Ablation("uniform_tail", uniform_tail, "top-1 and top-2 classes and values; the other $K-2$ share the rest evenly",
             "confidence, runner-up and its gap", "the tail's values and ordering", "incorrect classes"),
    Ablation("shuffle_tail", shuffle_tail, "top-1 and top-2 kept; the other $K-2$ values permuted per sample",
             "confidence, runner-up, gap, tail multiset", "the tail's ordering", "incorrect classes",
             note=f"one permutation per sample, {_PERMUTED}"),
    Ablation("uniform_confidence", uniform_confidence,
             "$\\mathrm{softmax}(s_i z_{\\text{AT}}/T)$ with $s_i$ such that the top probability is $m$",
             "the whole class ordering", "sample-wise confidence", "confidence", note=_RESCALED),
    Ablation("smoothed_labels", smoothed_labels, "$m$ at $y$, $(1-m)/(K-1)$ elsewhere", "label, mean confidence",
             "everything sample-specific", "control"),
    Ablation("swap_confidence", swap_confidence,
             "$\\mathrm{softmax}(s_i z_{\\text{AT}}/T)$ with top probability that of `standard_rescaled`",
             "AT's class ordering", "AT's sample-wise confidence", "confidence", note=_RESCALED),
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


def runner_up_agrees(full_p: Tensor, p: Tensor) -> Tensor:
    """Per sample: is ``full_p``'s runner-up class (largest but the argmax) the *unique* runner-up of ``p``?
    A tie names no rival, so a flattened target agrees nowhere."""
    r = full_p.scatter(1, full_p.argmax(dim=1, keepdim=True), -1.0).argmax(dim=1)
    q = p.scatter(1, p.argmax(dim=1, keepdim=True), -1.0)
    m = q.max(dim=1, keepdim=True).values
    return ((q == m).sum(dim=1) == 1) & (q.gather(1, r[:, None]) == m).squeeze(1)


def _rank_corr(a: Tensor, b: Tensor, tol: float = 1e-9) -> float:
    """Spearman ρ, NaN where either score is constant up to ``tol`` (a per-sample bisection leaves ~1e-12 of
    noise on a constant top probability, which would otherwise get a meaningless ρ)."""
    if float(a.max() - a.min()) < tol or float(b.max() - b.min()) < tol:
        return float("nan")
    return spearman(a, b)


def target_properties(p: Tensor, full_p: Tensor, T: float) -> dict[str, float]:
    """What a target ``p`` keeps of the full target ``full_p`` at T (the property table): mean top and runner-up
    probability, mean runner-up gap in logit units T·ln(p₁/p₂) (inf for one-hot rows), mean entropy (nats),
    Spearman ρ of the top probability with the full target's (NaN if constant), mean non-max Kendall τ with
    it, and the fraction of samples whose runner-up class is the full target's. The gap is what an attacker
    must close: flattening the non-max values keeps p₁ but widens it."""
    top2 = p.double().topk(2, dim=1).values
    gap = check_temperature(T) * (top2[:, 0].log() - top2[:, 1].log())
    return {"mean_top": float(top2[:, 0].mean()), "mean_runner_up": float(top2[:, 1].mean()),
            "mean_gap_logits": float(gap.mean()), "entropy": float(torch.special.entr(p.double()).sum(dim=1).mean()),
            "rho_top_full": _rank_corr(top2[:, 0], top_prob(full_p)),
            "tau_nonmax_full": float(nonmax_kendall(full_p, p).mean()),
            "runner_up_eq_full": float(runner_up_agrees(full_p, p).double().mean())}


def property_records(t: TeacherLogits, temperatures: tuple[float, ...], seed: int = 0) -> list[dict[str, object]]:
    """The property table: one row per (ablation, T) with :func:`target_properties` against ``full`` at T
    (teachers of one seed; ``seed`` also draws the permutations, as for the students)."""
    rows: list[dict[str, object]] = []
    for T in temperatures:
        ref = full(t, T)
        rows += [{"ablation": name, "T": T, **target_properties(ab(t, T, seed), ref, T)}
                 for name, ab in ABLATIONS.items()]
    return rows
