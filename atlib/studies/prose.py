"""What every chapter's prose and tables share: glued numbers, interval formatting, the setting table.

Every number a chapter's prose quotes goes through :func:`glue` (myst-nb's glue), so re-running the book on
another profile updates the prose; :func:`glue_setting` glues the setting every chapter quotes.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from IPython.display import Markdown

from atlib.core import stats
from atlib.core.runtime import device_name, precision_text, train_precision
from atlib.studies.context import Context
from atlib.studies.rule import Rule, book_level


def glue(name: str, value: Any) -> None:
    """Make ``value`` quotable in the chapter's prose as ``{glue:text}`name``` (numbers also with a format
    spec, ``{glue:text}`name:.3g```), through myst-nb's glue. Every number the prose of a chapter quotes goes
    through here, so re-running on another profile updates the prose.

    In the book build (the runner's kernel has ``$ATBOOK_BUILD=1``) nothing is displayed: the rendered prose
    shows the values in place. Run interactively (JupyterLab, where the prose shows the raw placeholders), the
    values are also printed in the cell's output, one line per cell: ``glued: f32_gap = 36.7, n_eval = 1000``."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars: store their plain repr
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"glue {name!r}: pass a number or a string (format it first), not {type(value).__name__}")
    _glue(name, value, display=False)
    if os.environ.get("ATBOOK_BUILD") != "1":
        _echo(f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {str(value)[:80]}")


_ECHOED: list[str] = []  # this cell's glued values, printed once the cell has run


def _echo(item: str) -> None:
    """Print ``glued: ...`` for :func:`glue`: in a Jupyter kernel collected into one line at the end of the cell,
    elsewhere at once (outside a kernel, myst-nb's glue leaves a bare IPython shell that runs no cells)."""
    from IPython import get_ipython

    ip = get_ipython()
    if getattr(ip, "kernel", None) is None:
        print(f"glued: {item}")
        return
    if not _ECHOED:
        ip.events.register("post_run_cell", _flush_echo)
    _ECHOED.append(item)


def _flush_echo(*_: Any) -> None:
    from IPython import get_ipython

    get_ipython().events.unregister("post_run_cell", _flush_echo)
    print(f"glued: {', '.join(_ECHOED)}")
    _ECHOED.clear()


class Term:
    """A glued value that pastes as plain text (``{glue:text}``) and as MyST Markdown (``{glue:md}`name:myst```):
    a rule's term such as an ablation's name, which the Markdown shows as code."""

    def __init__(self, markdown: str):
        self.markdown = markdown

    def __repr__(self) -> str:  # text/plain: a string literal, which myst-nb's glue:text unquotes
        return repr(self.markdown.replace("`", ""))

    def _repr_markdown_(self) -> str:
        return self.markdown


def glue_md(name: str, markdown: str | Term) -> None:
    """Make MyST Markdown quotable in the chapter's prose: inline as ``{glue:md}`name:myst```, or as a block with the
    ``{glue:md}`` directive and ``:format: myst`` (a rule's text, a list)."""
    from IPython.display import Markdown as _Markdown
    from myst_nb import glue as _glue

    _glue(name, markdown if isinstance(markdown, Term) else _Markdown(markdown), display=False)
    if os.environ.get("ATBOOK_BUILD") != "1":
        text = markdown.markdown if isinstance(markdown, Term) else markdown
        _echo(f"{name} = {text[:80]}")


def glue_rule(rule: Rule) -> None:
    """Glue a study's rule object for the chapter's prose: each part of its text as ``rule_<part>`` (Markdown, see
    :func:`glue_md`) and each term its text quotes under the term's name (as a :class:`Term`, for ``{glue:text}`` or
    ``{glue:md}``). The chapter never restates a rule, a threshold or an ablation name: it glues them from here."""
    for part in rule.TEXT:
        glue_md(f"rule_{part}", rule.text(part))
    for name, value in rule.terms().items():
        glue_md(name, Term(value))


def ci_label() -> str:
    """The confidence level of every interval in the book (``stats.mean_ci``'s default), e.g. "95%"."""
    return book_level()


def t_factor(n: int, level: float | None = None) -> float:
    """The Student-t factor of an interval over ``n >= 2`` replicates at ``level`` (default: the book's level;
    4.30 for n = 3 at 95%)."""
    from scipy import stats as sps

    level = inspect.signature(stats.mean_ci).parameters["level"].default if level is None else level
    return float(sps.t.ppf(0.5 + level / 2, df=n - 1))


def glue_setting(ctx: Context) -> None:
    """Glue what every chapter's prose quotes about the setting: ``ci`` (e.g. "95%"), ``seeds``, ``n_seeds``,
    ``side_seeds``, ``n_side_seeds`` (the seeds of everything but the standard and main AT models),
    ``n_eval``, ``dataset``, ``linf_eps``, ``l2_eps``, ``train_steps``, ``eval_steps`` and ``madry_step``
    (the factor c of the training attack's step c·ε/steps)."""
    p = ctx.profile
    tr = p.train_config(p.main_at).attack
    for name, value in {"ci": ci_label(), "seeds": ", ".join(map(str, p.seeds)), "n_seeds": len(p.seeds),
                        "side_seeds": ", ".join(map(str, p.side_seed_list)), "n_side_seeds": len(p.side_seed_list),
                        "n_eval": len(ctx.eval_y), "dataset": ctx.data.name, "linf_eps": f"{p.linf_eps:.4g}",
                        "l2_eps": f"{p.l2_eps:.4g}", "train_steps": p.train_steps, "eval_steps": p.eval_steps,
                        "madry_step": f"{tr.step_size * tr.steps / tr.eps:.3g}"}.items():
        glue(name, value)


def fmt(iv: stats.Interval, digits: int = 3) -> str:
    """``mean ± half-width (n seeds)``; one seed shows no interval."""
    if iv.n < 2:
        return f"{iv.mean:.{digits}g} (1 seed)"
    return f"{iv.mean:.{digits}g} ± {iv.half_width:.2g} ({iv.n} seeds)"


def _precision_row(ctx: Context) -> str:
    """What trained the models on this device, and that every evaluation is float32."""
    p = ctx.profile
    used = train_precision(p.precision, ctx.device, p.fast)
    how = ("bf16 autocast for every training step (forward, loss, backward and the PGD inner attack of AT); weights, "
           "optimiser and every evaluation attack in float32" if used == "bf16" else "float32 throughout")
    said = precision_text(p.precision, used, str(ctx.device))
    return how if said == used else f"{said}: {how}"


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
        "training precision": _precision_row(ctx),
        "AT attack (training)": tr_at.label + f", step {tr_at.step_size:.3g}, random start" if tr_at else "-",
        "evaluation attacks": "; ".join(f"{c.label} (step {c.step_size:.3g}, random start)" for c in atk.values()),
        "seeds": ", ".join(map(str, p.seeds)) + (
            f" (standard and main AT models, matched controls, chapter 04's students; the first "
            f"{len(p.side_seed_list)} for everything else)"
            if p.side_seed_list != p.seeds else ""),
        "device": device_name(ctx.device),
    }
    body = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return Markdown(f"| setting | value |\n| --- | --- |\n{body}")
