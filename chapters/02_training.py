# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Standard and adversarially-trained models: their logit distributions
#
# *Reading this in JupyterLab? There the prose shows each number as a glue placeholder; the code cells print
# the values they glue (`glued: name = value`), and the rendered book shows them in place.*
#
# The paper's first claim is that adversarial training (AT) *lowers, on average, the max logit and the
# logit gap* (top-1 minus top-2 logit). This chapter trains standard and PGD-AT models on the chosen
# profile's dataset, several seeds each, and measures their logits. The standard and main AT models have the
# profile's full set of seeds ({glue:text}`n_seeds`: chapter 03's intervals need them); the other models of the
# ε sweep and the L2-AT models have the first `side_seeds` of them.
#
# For a sample with logits $z \in \mathbb{R}^K$ we record
#
# - the **max logit** $\max_j z_j$;
# - the **centred max logit** $\max_j z_j - \frac{1}{K}\sum_j z_j$. Softmax is unchanged when the same
#   number is added to every logit of a sample, so the cross-entropy loss does not pin the raw max logit
#   down at all; its value comes from initialisation, weight decay and the optimiser. The centred max
#   logit removes that free shift;
# - the **logit gap** $z_{(1)} - z_{(2)}$, which fixes the top softmax probability together with the
#   rest of the logit vector. On correctly classified samples it equals the **margin**
#   $z_y - \max_{j\neq y} z_j$, the quantity the theory chapter reasons about.
#
# **What is reconstructed.** The paper's body text, settings and code are not available. The settings
# below follow common practice of the adversarial-robustness literature (PGD-AT of {cite:t}`madry2018towards`,
# inputs in $[0,1]$ with the normalisation inside the model, SGD with momentum and weight decay, step size
# {glue:text}`madry_step`$\,\varepsilon/\text{steps}$); the table below states every one of them. Attacks are run with the
# model in eval mode. We evaluate the last-epoch weights (no early stopping on test data).

# %% tags=["parameters"]
profile = "fashion"  # a built-in profile (atlib.studies.profiles.PROFILES) or a TOML profile file
results_dir = None  # where this chapter writes its part of summary.json and its figures
cache_dir = None  # artifact cache (default: $ATLIB_CACHE or ~/.cache/atlib)
data_root = None  # folder with the dataset files (default: $ATLIB_DATA, system paths, download)
device = None  # "cpu", "cuda", ... (default: CUDA when present)

# %%
from IPython.display import Markdown, display

from atlib.core import plots
from atlib.studies import context as cx, prose, shrinkage as study

ctx = cx.context(profile, cache_dir, data_root, device)
P = ctx.profile
prose.glue_setting(ctx)  # the numbers the prose below quotes
prose.glue_rule(study.rule)  # claim 1's rule and the convergence pilot's (atlib/studies/shrinkage/rules.py)
prose.setting_table(ctx)

# %% [markdown]
# ## Training
#
# Every model below is trained once per seed and stored in the artifact cache under a key made of its
# full configuration, the code version and the data fingerprint; re-running the chapter (or a later
# chapter that needs the same models) loads them instead of retraining. The models are a standard one
# ($\varepsilon=0$), L∞-AT at every $\varepsilon$ of the profile's sweep, and L2-AT at one $\varepsilon$.

# %%
runs = study.runs.training_runs(ctx)
print(f"{len(runs)} models ({sum(r.cached for r in runs)} loaded from the cache); "
      f"training them took {sum(r.train_seconds for r in runs):.0f} s in all on the machine that trained them")

# %% [markdown]
# ## Accuracy
#
# Clean and robust accuracy in percent on the fixed evaluation subset, as mean ± half-width of the {glue:text}`ci`
# Student-t interval over seeds. Every attack is named with its loss, norm, $\varepsilon$ and number of
# steps; "margin" is the loss $\max_{j\neq y} z_j - z_y$ of {cite:t}`carlini2017towards`. A model is only as
# robust as the strongest attack says: read the lower of the CE and margin columns.

# %%
study.views.accuracy_table(ctx, runs)

# %% [markdown]
# ## Logit statistics on clean test inputs
#
# Means over the evaluation subset, then mean ± {glue:text}`ci` interval over seeds. The margin column averages only
# the samples each model classifies correctly.

# %%
study.views.logit_table(runs, "clean")

# %% [markdown]
# ### Does AT shrink the logits? The rule, then the numbers
#
# For each statistic we pair the standard and the main L∞-AT model trained with the same seed and
# take the difference AT − standard per seed. The rule, fixed before looking: {glue:md}`rule_statistic:myst`
#
# Claim 1 itself reads the mean logit gap and the mean max logit: {glue:md}`rule_claim:myst`
#
# No verdict is read from a model that did not learn. {glue:md}`rule_gates:myst`

# %%
display(Markdown(study.views.gates_text(ctx, runs)))

# %%
shrink = study.rules.paired_shrinkage(runs, P.model_specs()[0], P.main_at)
display(Markdown(study.rules.shrinkage_text(shrink, "standard", P.main_at.label)))

# %% [markdown]
# ## The distributions
#
# Histograms over the evaluation subset, seeds pooled; dashed lines mark the means. The top row uses
# clean inputs, the bottom row the adversarial inputs of the L∞ PGD-CE evaluation attack (each model
# attacked white-box). Under attack the standard model is pushed to confident *wrong* predictions,
# so its max logit stays large while its margin turns negative.

# %%
shown = [s for s in P.model_specs() if s.kind == "standard" or s == P.main_at or s.norm == "l2"]
atk_label = P.eval_attacks()["linf_ce"].label
fig = plots.logit_histograms({
    "clean": study.views.pooled_logits(runs, shown, "clean"),
    f"attacked ({atk_label})": study.views.pooled_logits(runs, shown, "linf_ce"),
})
plots.save(fig, results_dir, "logit_histograms");

# %% [markdown]
# ## How the logits evolve during training
#
# After every epoch each model's logits on the evaluation subset are summarised (clean inputs). Lines
# are the mean over seeds, bands the range over seeds.

# %%
fig = plots.training_curves(
    {s.label: [r.history for r in study.runs.runs_of(runs, s)] for s in shown},
    {"monitor_mean_max_logit": "mean max logit", "monitor_mean_centred_max_logit": "mean centred max logit",
     "monitor_mean_logit_gap": "mean logit gap", "monitor_accuracy": "clean accuracy (eval subset)"},
)
plots.save(fig, results_dir, "training_curves");

# %% [markdown]
# ### Trained to convergence?
#
# A model that is still improving would make every later comparison one between unfinished models. The
# convergence pilot (run once per profile, not by the book: it trains every model twice as long) trains the
# standard, main AT and matched models (chapter 03's control) of every seed at this schedule and at twice its
# epochs. The rule, fixed before the pilot ran: {glue:md}`rule_convergence:myst` The record quoted
# below is the one committed for this profile (commit {glue:text}`pilot_commit`, run {glue:text}`pilot_date`).

# %%
pilot = study.convergence.pilot_record(P)
prose.glue("pilot_commit", pilot["commit"][:12] if pilot else "none recorded")
prose.glue("pilot_date", pilot["date"] if pilot else "never")
display(Markdown(study.convergence.convergence_text(pilot, P)))

# %% [markdown]
# ## A sweep over the training $\varepsilon$
#
# L∞-AT at each training $\varepsilon$ of the sweep ($\varepsilon=0$ is the standard model), evaluated
# on clean inputs; accuracy under the main L∞ PGD-CE attack for reference. Error bars are {glue:text}`ci` t-intervals
# over the side seeds (the same seeds at every $\varepsilon$). If shrinkage is a dose–response effect of the adversary's budget, the statistics should
# fall as $\varepsilon$ grows.

# %%
eps, series = study.views.eps_sweep(ctx, runs)
fig = plots.eps_sweep(eps, series, "training ε (L∞)")
plots.save(fig, results_dir, "eps_sweep");
study.views.eps_sweep_frame(eps, series)

# %% [markdown]
# ## Logit statistics on attacked inputs
#
# The same statistics on the adversarial inputs of the L∞ PGD-CE evaluation attack.

# %%
study.views.logit_table(runs, "linf_ce")

# %% [markdown]
# ## What this chapter found
#
# The verdicts above are computed from this run's numbers by the stated rule; they are what this
# dataset, model and schedule show, and the CIFAR-10 scale of the paper is only covered when the
# `cifar10` profile is run on a GPU. Whether shrinkage is a *cause* of robustness or a symptom of it is
# the subject of the theory chapter and of the distillation ablations.

# %%
_ = cx.write_section(results_dir, "training", study.views.summary(ctx, runs, shrink, eps, series, pilot))
