"""Tables and computed verdicts for the chapters: seeds aggregated with t-intervals, nothing hand-typed."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from IPython.display import Markdown

from atlib.core import stats
from atlib.studies.shrinkage.runs import Context, ModelRun
from atlib.studies.profiles import ModelSpec
from atlib.core.runtime import device_name

LOGIT_STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean_max_logit": stats.max_logit,
    "mean_centred_max_logit": stats.centred_max_logit,
    "mean_logit_gap": stats.logit_gap,
}


def glue(name: str, value: Any) -> None:
    """Make ``value`` quotable in the chapter's prose as ``{glue:text}`name``` (numbers also with a format
    spec, ``{glue:text}`name:.3g```), through myst-nb's glue; nothing is displayed. Every number the prose
    of a chapter quotes goes through here, so re-running on another profile updates the prose."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars: store their plain repr
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"glue {name!r}: pass a number or a string (format it first), not {type(value).__name__}")
    _glue(name, value, display=False)


def ci_label() -> str:
    """The confidence level of every interval in the book (``stats.mean_ci``'s default), e.g. "95%"."""
    return f"{inspect.signature(stats.mean_ci).parameters['level'].default:.0%}"


def t_factor(n: int) -> float:
    """The Student-t factor of an interval over ``n >= 2`` replicates at the book's level (4.30 for n = 3 at 95%)."""
    from scipy import stats as sps

    level = inspect.signature(stats.mean_ci).parameters["level"].default
    return float(sps.t.ppf(0.5 + level / 2, df=n - 1))


def glue_setting(ctx: Context) -> None:
    """Glue what every chapter's prose quotes about the setting: ``ci`` (e.g. "95%"), ``seeds``, ``n_seeds``,
    ``n_eval``, ``dataset``, ``linf_eps``, ``l2_eps``, ``train_steps``, ``eval_steps`` and ``madry_step``
    (the factor c of the training attack's step c·ε/steps)."""
    p = ctx.profile
    tr = p.train_config(p.main_at).attack
    for name, value in {"ci": ci_label(), "seeds": ", ".join(map(str, p.seeds)), "n_seeds": len(p.seeds),
                        "n_eval": len(ctx.eval_y), "dataset": ctx.data.name, "linf_eps": f"{p.linf_eps:.4g}",
                        "l2_eps": f"{p.l2_eps:.4g}", "train_steps": p.train_steps, "eval_steps": p.eval_steps,
                        "madry_step": f"{tr.step_size * tr.steps / tr.eps:.3g}"}.items():
        glue(name, value)


def fmt(iv: stats.Interval, digits: int = 3) -> str:
    """``mean ± half-width (n seeds)``; one seed shows no interval."""
    if iv.n < 2:
        return f"{iv.mean:.{digits}g} (1 seed)"
    return f"{iv.mean:.{digits}g} ± {iv.half_width:.2g} ({iv.n} seeds)"


def setting_table(ctx: Context) -> Markdown:
    """The profile's setting, including the attacks by name, as a two-column Markdown table."""
    p, d = ctx.profile, ctx.data
    atk = p.eval_attacks()
    tr_at = p.train_config(p.main_at).attack
    rows = {
        "profile": f"{p.name} — {p.description}",
        "dataset": f"{d.name}: {len(d.train_y)} training images used, {len(ctx.eval_y)} fixed test images for "
                   f"evaluation ({d.source})",
        "model": f"{p.arch}" + (f" (width {p.width})" if p.width else ""),
        "training": f"SGD (Nesterov momentum 0.9, weight decay {p.weight_decay}), batch {p.batch_size}, "
                    f"{p.epochs} epochs, one-cycle lr peak {p.lr}; last-epoch weights are evaluated",
        "AT attack (training)": tr_at.label + f", step {tr_at.step_size:.3g}, random start" if tr_at else "-",
        "evaluation attacks": "; ".join(f"{c.label} (step {c.step_size:.3g}, random start)" for c in atk.values()),
        "seeds": ", ".join(map(str, p.seeds)),
        "device": device_name(ctx.device),
    }
    body = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return Markdown(f"| setting | value |\n| --- | --- |\n{body}")


def runs_of(runs: Sequence[ModelRun], spec: ModelSpec) -> list[ModelRun]:
    """The runs of one spec, ordered by seed."""
    return sorted((r for r in runs if r.spec == spec), key=lambda r: r.seed)


def specs_of(runs: Sequence[ModelRun]) -> list[ModelSpec]:
    seen: list[ModelSpec] = []
    for r in runs:
        if r.spec not in seen:
            seen.append(r.spec)
    return seen


def interval(runs: Sequence[ModelRun], fn: Callable[[ModelRun], float]) -> stats.Interval:
    return stats.mean_ci([fn(r) for r in runs])


def accuracy_table(ctx: Context, runs: Sequence[ModelRun]) -> pd.DataFrame:
    """Clean and robust accuracy (%) of every spec, mean ± 95% t-interval over seeds."""
    atk = ctx.profile.eval_attacks()
    cols = {"clean": "clean"} | {k: c.label for k, c in atk.items()}
    table = {}
    for spec in specs_of(runs):
        rs = runs_of(runs, spec)
        table[spec.label] = {title: fmt(interval(rs, lambda r, k=k: 100 * r.acc(k))) for k, title in cols.items()}
    return pd.DataFrame(table).T


def logit_table(runs: Sequence[ModelRun], key: str = "clean") -> pd.DataFrame:
    """Mean max logit, centred max logit, gap and margin (correct samples) per spec, over seeds."""
    names = {"mean_max_logit": "max logit", "mean_centred_max_logit": "centred max logit",
             "mean_logit_gap": "logit gap", "mean_margin_correct": "margin (correct only)"}
    table = {}
    for spec in specs_of(runs):
        rs = runs_of(runs, spec)
        table[spec.label] = {t: fmt(interval(rs, lambda r, k=k: r.logit_stats(key)[k])) for k, t in names.items()}
    return pd.DataFrame(table).T


def pooled_logits(runs: Sequence[ModelRun], specs: Sequence[ModelSpec], key: str) -> dict[str, torch.Tensor]:
    """Logits of each spec with its seeds stacked, for histograms."""
    return {s.label: torch.cat([r.logits[key] for r in runs_of(runs, s)]) for s in specs}


def paired_shrinkage(runs: Sequence[ModelRun], base: ModelSpec, treated: ModelSpec,
                     key: str = "clean") -> dict[str, dict[str, Any]]:
    """Per statistic: base and treated means over seeds, and the seed-paired difference treated − base."""
    b, t = {r.seed: r for r in runs_of(runs, base)}, {r.seed: r for r in runs_of(runs, treated)}
    seeds = sorted(set(b) & set(t))
    out = {}
    for name in LOGIT_STATS:
        bv = [b[s].logit_stats(key)[name] for s in seeds]
        tv = [t[s].logit_stats(key)[name] for s in seeds]
        diff = stats.mean_ci([x - y for x, y in zip(tv, bv)])
        out[name] = {"base": stats.mean_ci(bv).as_dict(), "treated": stats.mean_ci(tv).as_dict(),
                     "paired_diff": diff.as_dict(), "per_seed_diff": [x - y for x, y in zip(tv, bv)],
                     "shrinks": bool(diff.n > 1 and diff.high < 0), "grows": bool(diff.n > 1 and diff.low > 0)}
    return out


def shrinkage_text(result: dict[str, dict[str, Any]], base: str, treated: str) -> str:
    """A Markdown paragraph stating, per statistic, what the numbers say (the rule: the paired 95%
    interval of treated − base lies entirely below 0 → "shrinks", above 0 → "grows", else "no clear change")."""
    lines = []
    for name, r in result.items():
        d = r["paired_diff"]
        verdict = "**shrinks**" if r["shrinks"] else "**grows**" if r["grows"] else "shows **no clear change**"
        lines.append(f"- {name.removeprefix('mean_').replace('_', ' ')}: {base} {r['base']['mean']:.3g}, "
                     f"{treated} {r['treated']['mean']:.3g}; paired difference {d['mean']:+.3g} "
                     f"[{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}] ({d['n']} seeds) → {verdict}")
    return "\n".join(lines)


def eps_sweep(ctx: Context, runs: Sequence[ModelRun]) -> tuple[list[float], dict[str, list[stats.Interval]]]:
    """Per training ε of the L∞ sweep (0 = standard): clean logit statistics and accuracies over seeds."""
    p = ctx.profile
    specs = [ModelSpec("standard") if e == 0 else ModelSpec("at", "linf", e) for e in p.linf_sweep]
    series: dict[str, list[stats.Interval]] = {
        "max logit": [], "centred max logit": [], "logit gap": [], "clean acc (%)": [], "PGD-CE L∞ acc (%)": []}
    for s in specs:
        rs = runs_of(runs, s)
        series["max logit"].append(interval(rs, lambda r: r.logit_stats()["mean_max_logit"]))
        series["centred max logit"].append(interval(rs, lambda r: r.logit_stats()["mean_centred_max_logit"]))
        series["logit gap"].append(interval(rs, lambda r: r.logit_stats()["mean_logit_gap"]))
        series["clean acc (%)"].append(interval(rs, lambda r: 100 * r.acc("clean")))
        series["PGD-CE L∞ acc (%)"].append(interval(rs, lambda r: 100 * r.acc("linf_ce")))
    return list(p.linf_sweep), series
