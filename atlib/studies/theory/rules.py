"""Chapter 01's rules, fixed before the numbers: when the Gaussian prediction holds, when the closed form matches PGD,
when a linear statistic shrinks, when the first-order flip radius ranks and is calibrated, and when a logit-shrinking
control is matched to AT and reproduces its robustness.

One rule object, :data:`RULE` (:class:`TheoryRule`): its tolerances, its text (one part per section of the chapter)
and the functions that apply it. Chapter 01 tests no claim of the paper directly, so the ledger has no entry for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atlib.core import stats
from atlib.studies.rule import Rule, book_level, const
from atlib.studies.theory import runs as theory


@dataclass(frozen=True, kw_only=True)
class TheoryRule(Rule):
    """The tolerances and thresholds of chapter 01's checks and verdicts."""

    TITLE = "Chapter 01: the linear theory's checks, the flip radius and the logit-shrinking controls"
    CHAPTER = "01_theory"
    TEXT = {
        "gaussian": ("the prediction holds at an $\\varepsilon$ if the seed-mean trained scale is within {gauss_tol} "
                     "of $c^*(\\varepsilon)$."),
        "checks": ("the closed form must match PGD, and the binary shifted-logit CE the attacked loss, to {check_tol} "
                   "(float64); the multiclass bound holds if PGD's loss exceeds it by at most {bound_tol} anywhere."),
        "linear": ("a statistic *shrinks* if the seed-paired difference (largest $\\varepsilon$ − $\\varepsilon=0$) has "
                   "a {level} t-interval entirely below zero; we also report whether the seed means fall monotonically "
                   "across the sweep."),
        "flip": ("the first-order prediction *ranks samples well* if the lower end of the {level} t-interval over "
                 "seeds of Spearman's $\\rho$ is at least {flip_rho_min}, and is *calibrated* if the seed-mean of the "
                 "median ratio bisection / predicted lies in [{flip_lo}, {flip_hi}]."),
        "controls": ("per seed, the fraction of the robustness gap closed is (control − standard) / (AT − standard) of "
                     "the accuracy under *both* attacks (a sample counts only if PGD-CE and PGD-margin both fail). A "
                     "control *reproduces* AT's robustness if that fraction's seed mean is ≥ {ctrl_enough} and its "
                     "interval's low end > {ctrl_none}; it gives *no* robustness if the interval's high end is < "
                     "{ctrl_none}; otherwise *partial*. If no control reproduces it, shrinkage is not a sufficient "
                     "cause of robustness here."),
    }

    gauss_tol: float = const(0.1, "section 2: the prediction holds if trained and predicted scale agree within this "
                                  "relative error")
    check_tol: float = const(1e-5, "section 3: the closed form must match PGD, and the binary bound be exact, to this "
                                   "(float64)")
    bound_tol: float = const(1e-6, "section 3: the multiclass bound holds if PGD's CE exceeds it by at most this "
                                   "(float64 round-off)")
    flip_rho_min: float = const(0.5, "section 6: ranks well if the low end of Spearman ρ's interval is at least this")
    flip_ratio_band: tuple[float, float] = const((0.67, 1.5), "section 6: calibrated if the median ratio bisection / "
                                                              "predicted lies in this band")
    calib_tol: float = const(0.15, "section 7: a control is matched to AT if its calibration gap is within this "
                                   "relative error of AT's")
    ctrl_enough: float = const(0.5, "section 7: a control reproduces AT if it closes at least this fraction of the "
                                    "robustness gap (seed mean) ...")
    ctrl_none: float = const(0.25, "... with its interval above this; it gives no robustness if its interval lies "
                                   "below this")

    def terms(self) -> dict[str, str]:
        return {"gauss_tol": f"{self.gauss_tol:.0%}", "calib_tol": f"{self.calib_tol:.0%}",
                "check_tol": f"{self.check_tol:.0e}".replace("e-0", "e-"),
                "bound_tol": f"{self.bound_tol:.0e}".replace("e-0", "e-"), "level": book_level(),
                "flip_rho_min": f"{self.flip_rho_min:g}", "flip_lo": f"{self.flip_ratio_band[0]:g}",
                "flip_hi": f"{self.flip_ratio_band[1]:g}", "ctrl_enough": f"{self.ctrl_enough:g}",
                "ctrl_none": f"{self.ctrl_none:g}"}


RULE = TheoryRule()


def gaussian_verdict(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Section 2 on :func:`views.gaussian_rows`: the prediction holds at ε if |mean trained scale − c*(ε)| ≤
    gauss_tol·c*(ε); the shrinkage trend holds if the mean trained scale falls monotonically over the sweep."""
    tol = RULE.gauss_tol
    per = [{"eps": r["eps"], "predicted": r["predicted"]["scale"], "trained": r["trained"]["scale"].mean,
            "rel_err": abs(r["trained"]["scale"].mean - r["predicted"]["scale"]) / max(r["predicted"]["scale"], 1e-12)}
           for r in rows]
    for p in per:
        p["holds"] = bool(p["rel_err"] <= tol)
    return {"per_eps": per, "all_hold": all(p["holds"] for p in per),
            "trend": theory.trend([p["trained"] for p in per]), "rel_tol": tol}


def check_verdicts(err: float, binary: dict[str, float], multi: dict[str, float]) -> dict[str, Any]:
    """Section 3: whether the closed form matches PGD, the binary bound is exact and the multiclass bound holds."""
    r = RULE
    return {"tol": r.check_tol,
            "bound_holds": bool(multi["max_violation"] <= r.bound_tol and binary["max_violation"] <= r.bound_tol),
            "closed_form_matches_pgd": bool(err <= r.check_tol), "binary_exact": bool(binary["max_abs_diff"] <= r.check_tol)}


def linear_verdicts(lin: dict[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Section 4, per method and statistic: the trend of the seed means over the sweep, and the seed-paired
    difference largest ε − (ε = 0) with its t-interval ("shrinks" if entirely below 0)."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        out[method] = {}
        for k in ("mean_max_logit", "mean_centred_max_logit", "mean_logit_gap", "mean_margin_correct", "weight_norm"):
            means = [stats.mean_ci([r[k] for r in recs]).mean for recs in lin[method]]
            diff = stats.mean_ci([b[k] - a[k] for a, b in zip(lin[method][0], lin[method][-1])])
            out[method][k] = {"trend": theory.trend(means), "paired_diff": diff.as_dict(),
                              "shrinks": bool(diff.n > 1 and diff.high < 0), "means": means}
    return out


def flip_verdict(ss: list[dict[str, float]]) -> dict[str, Any]:
    """Section 6 on one model kind's per-seed flip summaries: ranks well, calibrated."""
    r = RULE
    rho = stats.mean_ci([s["spearman"] for s in ss])
    ratio = stats.mean_ci([s["median_ratio"] for s in ss])
    low = rho.low if rho.n > 1 else rho.mean
    return {"spearman": rho.as_dict(), "median_ratio": ratio.as_dict(), "ranks_well": bool(low >= r.flip_rho_min),
            "calibrated": bool(r.flip_ratio_band[0] <= ratio.mean <= r.flip_ratio_band[1]), "rho_min": r.flip_rho_min,
            "ratio_band": list(r.flip_ratio_band)}


def gap_closed(ctrl: list[dict[str, float]], std: list[dict[str, float]], at: list[dict[str, float]]) -> stats.Interval:
    """Section 7's statistic: per seed, (control − standard) / (AT − standard) of the accuracy under both attacks;
    its t-interval over seeds."""
    return stats.mean_ci([(c["worst"] - s["worst"]) / max(a["worst"] - s["worst"], 1e-9)
                          for c, s, a in zip(ctrl, std, at)])


def control_verdict(iv: stats.Interval) -> str:
    """Section 7: "reproduces" if the mean fraction of the robustness gap closed is ≥ ``ctrl_enough`` and its
    interval's low end > ``ctrl_none``; "no" if the interval's high end < ``ctrl_none``; else "partial"."""
    hi = iv.high if iv.n > 1 else iv.mean
    lo = iv.low if iv.n > 1 else iv.mean
    if iv.mean >= RULE.ctrl_enough and lo > RULE.ctrl_none:
        return "reproduces"
    if hi < RULE.ctrl_none:
        return "no"
    return "partial"


def control_verdicts(rows: dict[str, list[dict[str, float]]], std: str, at: str
                     ) -> tuple[dict[str, stats.Interval], dict[str, str]]:
    """Section 7 on every control of ``rows`` (all but the ``std`` and ``at`` rows): the fraction of the robustness
    gap closed, and the verdict."""
    closed = {name: gap_closed(r, rows[std], rows[at]) for name, r in rows.items() if name not in (std, at)}
    return closed, {name: control_verdict(iv) for name, iv in closed.items()}


def judge_calibration(cal: dict[str, dict[str, Any]], target_gap: float) -> dict[str, dict[str, Any]]:
    """Section 7: each control's calibration with ``matched`` added: its chosen strength's gap is within ``calib_tol``
    of AT's (relative)."""
    return {k: c | {"matched": bool(abs(c["chosen_gap"] - target_gap) <= RULE.calib_tol * target_gap)}
            for k, c in cal.items()}
