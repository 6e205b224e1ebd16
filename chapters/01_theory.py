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
# # The theory of logit shrinkage, derived and checked
#
# *Reading this in JupyterLab? There the prose shows each number as a glue placeholder; the code cells print
# the values they glue (`glued: name = value`), and the rendered book shows them in place.*
#
# The paper claims that adversarial training (AT) lowers the max logit and the logit gap, and that
# there is a theoretical reason for it. Its derivation is not available to us, so this chapter
# reconstructs one from first principles for **linear softmax models**, says exactly where it is a
# theorem, where it is only a bound and where it is a heuristic, and then checks each step against
# measurement: on a Gaussian toy problem where the prediction is not circular, on linear models
# trained on the profile's dataset, and, to first order, on chapter 02's deep networks. It ends with
# controls that shrink the logits *without* an adversary, to ask whether shrinkage is a cause of
# robustness or a symptom of it.
#
# ## 1. Derivation
#
# **Setting.** A linear model $z = Wx + b$ with rows $w_1,\dots,w_K$, a sample $(x, y)$ with pixels in
# $[0,1]^D$, and an adversary $\|\delta\|_p \le \varepsilon$. The dual norm is
# $\|v\|_q = \max_{\|\delta\|_p\le 1} v^\top\delta$: $q = 1$ for $p=\infty$ and $q=2$ for $p=2$.
#
# **Pairwise margins.** The margin against class $j$ is $m_j(x) = z_y - z_j = (w_y - w_j)^\top x + b_y - b_j$.
# A perturbation changes it by $(w_y - w_j)^\top\delta$, so by the definition of the dual norm
#
# $$\min_{\|\delta\|_p \le \varepsilon} m_j(x+\delta) = m_j(x) - \varepsilon\,\|w_y - w_j\|_q ,$$
#
# attained at $\delta = -\varepsilon\,\mathrm{sign}(w_y - w_j)$ for $L_\infty$ and at
# $\delta = -\varepsilon (w_y - w_j)/\|w_y - w_j\|_2$ for $L_2$. This is exact, for each pair separately.
#
# **The pixel box.** The attacker must also keep $x+\delta \in [0,1]^D$. For $L_\infty$ the feasible set
# stays a product of intervals, $\delta_i \in [-\min(\varepsilon, x_i),\ \min(\varepsilon, 1-x_i)]$, so the
# minimum is still coordinate-wise and closed-form: with $d = w_y - w_j$ each coordinate moves against
# $\mathrm{sign}(d_i)$ by its room $r_i$ ($\min(\varepsilon, x_i)$ downwards, $\min(\varepsilon, 1-x_i)$ upwards),
# and the drop is $s_j = \sum_i |d_i|\, r_i = \|d \odot r\|_1$. Sign-step PGD with clamping reaches exactly
# this vertex. For $L_2$ the ball intersected with the box is not a product set: the worst case solves a
# small convex problem with no closed form, and PGD's "project on the ball, then clamp" is not the
# projection on the intersection. So the $L_2$ checks below use points far from the box edges.
#
# **The shifted-logit bound.** Cross-entropy depends on the margins only:
# $\mathrm{CE}(z, y) = \log\bigl(1 + \sum_{j\ne y} e^{-m_j}\bigr)$. Every $m_j(x+\delta) \ge m_j(x) - s_j$,
# hence for every admissible $\delta$
#
# $$\mathrm{CE}\bigl(z(x+\delta), y\bigr) \;\le\; \mathrm{CE}(\tilde z, y), \qquad \tilde z_j = z_j + s_j\ (j\ne y),\ \tilde z_y = z_y .$$
#
# With two classes there is a single term and a single worst $\delta$, so the bound is **exact**: the
# AT loss is the logistic loss of $m - \varepsilon\|w_y - w_j\|_q$. With more classes each $j$ wants its own
# $\delta$, and the bound is in general **strict**. Training on $\mathrm{CE}(\tilde z, y)$ (the
# "closed-form worst case" below) therefore minimises an upper bound on the multiclass AT loss.
#
# **The scale argument, and where it stops being a theorem.** Write $W = cU$, $b = c\beta$ with
# $\|U\|=1$. Margins and shifts are both homogeneous of degree one in $c$, so the AT loss is
# $L(c) = \mathbb{E}\log\bigl(1+\sum_{j\ne y} e^{-c\,a_j}\bigr)$ with the *normalised robust margins*
# $a_j = \bar m_j - \bar s_j$ of the unit-scale model. For a fixed direction $U$, $L$ is convex in $c$.
# If every $a_j > 0$ (robustly separable data) $L \to 0$ as $c\to\infty$: the scale grows without bound,
# exactly like standard CE on separable data (the implicit bias towards the max-margin direction,
# {cite:t}`soudry2018implicit`). If some $a_j<0$, their terms grow linearly in $c$ and the optimum $c^*$ is finite.
# Raising $\varepsilon$ lowers every $a_j$ (by $\varepsilon\|u_y - u_j\|_q$), turns more of them negative,
# and so *suggests* a smaller $c^*$: bounded logits and smaller gaps. That is a **heuristic**, not a
# theorem: real pixels are not linearly separable, so $c^*$ is finite already at $\varepsilon=0$;
# $dL/dc = -\mathbb{E}\sum_j a_j\,\sigma_j$ (with softmax weights $\sigma_j$) is not monotone in the
# margins; and the direction $U$ changes with $\varepsilon$ too. Whether the scale falls is an empirical
# question below.
#
# **What is identifiable.** Softmax ignores a common shift of a sample's logits: adding any vector $u$
# to every row of $W$ adds $u^\top x$ to every logit and changes no loss, standard or adversarial. So
# the loss pins down the margins, the gap, and the **centred max logit** $\max_j z_j - \frac1K\sum_j z_j$,
# but **not** the raw max logit, whose value comes from initialisation, weight decay and the optimiser.
# The theory predicts the first three; for the raw max logit it predicts nothing.

# %% tags=["parameters"]
profile = "fashion"  # a built-in profile (atlib.studies.profiles.PROFILES) or a TOML profile file
results_dir = None  # where this chapter writes its part of summary.json and its figures
cache_dir = None  # artifact cache (default: $ATLIB_CACHE or ~/.cache/atlib)
data_root = None  # folder with the dataset files (default: $ATLIB_DATA, system paths, download)
device = None  # "cpu", "cuda", ... (default: CUDA when present)

# %%
from IPython.display import Markdown, display

from atlib.core import plots
from atlib.studies import context as cx, prose, shrinkage, theory as study

ctx = cx.context(profile, cache_dir, data_root, device)
P = ctx.profile
G, L, D = P.theory.gaussian, P.theory.linear, P.theory.deep
prose.glue_setting(ctx)  # the numbers the prose below quotes
prose.glue_rule(study.rule)  # the chapter's rules and their tolerances (atlib/studies/theory/rules.py)
prose.glue("bound_steps", L.bound_steps)
prose.setting_table(ctx)

# %% [markdown]
# ## 2. A prediction that is not circular: two Gaussian classes under $L_2$
#
# Labels $y=\pm1$ with equal probability, $x = y\mu + \sigma g$, $g \sim \mathcal N(0, I_d)$, and an $L_2$
# adversary without a box. The logit difference is $s = w^\top x$ and, by the binary case above, the
# exact AT loss is $\mathbb{E}\,\mathrm{softplus}\bigl(-(y\,w^\top x - \varepsilon\|w\|_2)\bigr)$. Since
# $y\,w^\top x \sim \mathcal N(w^\top\mu, \sigma^2\|w\|^2)$ and the loss falls as $w^\top\mu$ grows, the
# best direction is $\mu/\|\mu\|$, and the whole problem reduces to one dimension, the scale $c=\|w\|$:
#
# $$c^*(\varepsilon) = \arg\min_{c\ge 0}\ \mathbb{E}_{g\sim\mathcal N(0,1)}\ \mathrm{softplus}\bigl(-c(\|\mu\| - \varepsilon + \sigma g)\bigr).$$
#
# We solve it numerically (Gauss–Hermite quadrature, bounded scalar minimisation). Independently, we
# sample a training set and train $w$ by gradient descent on the same loss, then compare scale, mean
# margin $\mathbb{E}[y s]$ and mean max logit of the centred logits $(-s/2, s/2)$ on a fresh test sample.
# (For this model the logistic link is well specified, so the minimiser is also
# $2(\|\mu\|-\varepsilon)/\sigma^2$: the scale falls *linearly* to $0$ at $\varepsilon = \|\mu\|$.)
#
# Gradient descent needs a step size below the curvature of the $\varepsilon\|w\|$ term, which is
# $\varepsilon/\|w\|$ across the direction of $w$ and so *grows* as the scale shrinks: near
# $\varepsilon \to \|\mu\|$ too large a step oscillates instead of converging (a development run with a larger
# learning rate missed $c^*$ near $\varepsilon = \|\mu\|$ badly this way).
#
# **Rule, fixed before the numbers:** {glue:md}`rule_gaussian:myst`

# %%
gauss = study.runs.cached_gaussian_experiment(ctx, G, P.side_seed_list)
gv = study.views.gaussian_verdict(gauss)
display(Markdown(f"Setting: $d={G.dim}$, $\\|\\mu\\|={G.mu_norm}$, $\\sigma={G.sigma}$, {G.n_train} training and "
                 f"{G.n_test} test points per seed, {G.steps} full-batch gradient-descent steps (momentum 0.9, "
                 f"lr {G.lr}), seeds {', '.join(map(str, P.side_seed_list))}; intervals are {prose.ci_label()} t-intervals over seeds."))
fig = study.views.gaussian_figure(gauss)
_ = plots.save(fig, results_dir, "theory_gaussian")
study.views.gaussian_frame(gauss)

# %%
display(Markdown(study.views.gaussian_text(gv)))

# %% [markdown]
# ## 3. The closed form against PGD, on trained linear models
#
# Linear softmax models on the flattened pixels of the profile's dataset are trained below. Before
# looking at their logits we check the algebra on their stored weights (the closed-form model trained
# at the largest $\varepsilon$, the first seed, the first {glue:text}`check_n` evaluation images, float64):
#
# - the closed-form worst pairwise margin with the box against what atlib's sign-step PGD (margin loss on
#   that pair, no random start, clamped to $[0,1]$) reaches;
# - in the binary case (the two most frequent classes, with their two rows of $W$) the shifted-logit
#   CE against the PGD-CE-attacked loss (PGD-{glue:text}`bound_steps`, random start);
# - in the multiclass case, whether the shifted-logit CE upper-bounds that loss.
#
# **Rule, fixed before the numbers:** {glue:md}`rule_checks:myst`
#
# The unit tests run the same checks on random models, for $L_2$ without the box as well, and a
# mutation test re-runs them with the wrong dual norm ($L_2$ where $L_1$ is due) to show that they fail.

# %%
lin = study.runs.cached_linear_experiment(ctx, L)
checks = study.views.linear_checks(lin, ctx.eval_x, ctx.eval_y, L)
prose.glue("check_n", checks["n"])
study.views.checks_frame(checks)

# %% [markdown]
# ## 4. Linear models on the dataset: an $\varepsilon$ sweep
#
# Each model is trained from the same seeded initialisation on the first training images of the
# profile's subset (the number is in the line below), by SGD with momentum and weight decay, either
# on the **closed-form worst case** (CE of the shifted logits with the exact $L_\infty$-with-box shifts:
# exact per pair, an upper bound in the multiclass case) or by **PGD-AT** ($L_\infty$, random start,
# step {glue:text}`madry_step`$\,\varepsilon/\text{steps}$). Statistics are on the clean evaluation subset; "exact robust acc" is
# the certified accuracy under $L_\infty$ with the box at the training $\varepsilon$, computed from the
# closed form (for a linear model it is the true robust accuracy, no attack needed).
#
# **Rule, fixed before the numbers:** {glue:md}`rule_linear:myst` The theory predicts shrinkage of the margin, gap,
# centred max logit and weight norm, and nothing for the raw max logit.

# %%
display(Markdown(f"{L.n_train} training images of {ctx.data.name}, {L.epochs} epochs, batch {L.batch_size}, lr "
                 f"{L.lr} (linear decay), weight decay {L.weight_decay}, PGD-AT with {L.pgd_steps} steps; "
                 f"{len(ctx.eval_y)} evaluation images; seeds {', '.join(map(str, P.side_seed_list))}."))
fig = study.views.linear_figure(lin)
_ = plots.save(fig, results_dir, "theory_linear_sweep")

# %%
display(Markdown("**Closed-form worst case**"))
display(study.views.linear_frame(lin, "closed_form"))
display(Markdown("**PGD-AT**"))
study.views.linear_frame(lin, "pgd")

# %%
lv = study.views.linear_verdicts(lin)
display(Markdown(study.views.verdict_text(lv, lin["eps"])))

# %% [markdown]
# ## 5. The logit distributions as $\varepsilon$ grows
#
# The rendered book shows every $\varepsilon$ of the sweep at once (closed-form models, seeds pooled,
# shared bins per column). In a live JupyterLab session, `study.views.epsilon_slider(lin)` builds a slider that
# redraws the same three histograms for one $\varepsilon$ at a time; the cell after the figure builds it,
# and evaluating `slider` in a cell of your own displays it.

# %%
fig = study.views.slider_static(lin, "closed_form")
_ = plots.save(fig, results_dir, "theory_linear_histograms")

# %%
slider = study.views.epsilon_slider(lin, "closed_form")  # evaluate `slider` in a live session to use it

# %% [markdown]
# ## 6. Deep networks, to first order
#
# For a deep net the margin $m(x) = z_y - \max_{j\neq y} z_j$ is not linear, but to first order an
# $L_\infty$ perturbation lowers it by $\varepsilon\|\nabla_x m\|_1$, so the sample should flip at about
# $\hat\varepsilon = m(x) / \|\nabla_x m(x)\|_1$. We compare this with the smallest $\varepsilon$ at which PGD
# flips the sample, found by bisection on $[0, \varepsilon_{\max}]$ (each probe an $L_\infty$ PGD with the
# margin loss, random start, step {glue:text}`madry_step`$\,\varepsilon/\text{steps}$; a sample counts as flipped if any iterate
# is misclassified; samples not flipped at $\varepsilon_{\max}$ are censored there). Models: chapter 02's
# standard and main $L_\infty$-AT models, the side seeds (`Profile.side_seeds`), on their first correctly classified evaluation
# images. The first-order picture ignores the box and the curvature: it should *over*estimate the
# radius where the margin bends down faster than linearly.
#
# **Rule, fixed before the numbers:** {glue:md}`rule_flip:myst`

# %%
deep_runs = shrinkage.runs.training_runs(ctx, (P.model_specs()[0], P.main_at))  # chapter 02's models, trained once
deep = {"standard": shrinkage.runs.runs_of(deep_runs, P.model_specs()[0]),
        P.main_at.label: shrinkage.runs.runs_of(deep_runs, P.main_at)}
flips = {label: [study.controls.flip_radius(ctx, r.spec, r.seed, D) for r in rs if r.seed in P.side_seed_list]
         for label, rs in deep.items()}
flip_sums = {label: [study.controls.flip_summary(f) for f in fs] for label, fs in flips.items()}
flip_v = {label: study.rules.flip_verdict(ss) for label, ss in flip_sums.items()}
display(Markdown(f"{D.n_flip} correctly classified images per model; PGD-{D.flip_steps} margin probes, "
                 f"{D.bisect_iters} bisection steps on [0, {D.eps_max}] (resolution "
                 f"{D.eps_max / 2 ** D.bisect_iters:.2g}); seeds {', '.join(map(str, P.side_seed_list))}."))
fig = study.views.flip_figure(flips, D.eps_max)
_ = plots.save(fig, results_dir, "theory_flip_radius")
study.views.flip_frame(flip_sums)

# %%
display(Markdown(study.views.flip_text(flip_sums, flip_v, D.flip_steps)))

# %% [markdown]
# ## 7. Is shrinkage enough? Controls
#
# If small logits *caused* robustness, any training that shrinks them should buy some. Three standard
# models shrink the logits without an adversary: **label smoothing** (targets $1-\alpha+\alpha/K$ and
# $\alpha/K$), **logit squeezing** (a penalty $\lambda\,\mathbb{E}\|z\|^2$, after {cite:t}`shafahi2019label`) and a
# **loss temperature** (CE on $z/T$, $T<1$, which trains the raw logits to be $T$ times smaller). They
# share the architecture, training subset, schedule and seeds of chapter 02's standard model.
#
# **How the strengths were chosen (without looking at robustness).** For each control, a small grid of
# strengths (stated below) is trained with the first seed; we pick the one whose mean clean logit gap on
# the first training images is closest to that of the main AT model (same seed, same images), and flag
# it if it is not within {glue:text}`calib_tol` of that target. Then the chosen strength is trained for every seed and
# attacked with chapter 02's $L_\infty$ evaluation attacks (the $L_2$ attacks are left out for time).
#
# **Rule, fixed before the numbers:** {glue:md}`rule_controls:myst` Caveat: label smoothing and logit squeezing
# are known to mask gradients, and these are PGD-{glue:text}`eval_steps` attacks only, so any gain is an upper bound on
# real robustness.

# %%
target, std_gap = study.controls.calibration_target(ctx)
cal = study.rules.judge_calibration(study.controls.calibrate(ctx, target, P.seeds[0]), target)
display(Markdown(f"Target: mean clean logit gap {target:.3g} of {P.main_at.label} (seed {P.seeds[0]}) on the first "
                 f"{D.n_calib} training images; the standard model has {std_gap:.3g} there."))
study.views.calibration_frame(cal)

# %%
ctrl_rows = study.controls.control_rows(ctx, deep, cal)
atk = study.controls.linf_attacks(ctx)
display(Markdown(f"Clean logit statistics on the {len(ctx.eval_y)} evaluation images and accuracy under "
                 f"{atk['linf_ce'].label} and {atk['linf_margin'].label} (random start); mean ± {prose.ci_label()} t-interval "
                 f"over seeds {', '.join(map(str, P.side_seed_list))}."))
study.views.controls_frame(ctrl_rows)

# %%
closed, ctrl_verdicts = study.rules.control_verdicts(ctrl_rows, "standard", P.main_at.label)
display(Markdown(study.views.controls_text(closed, ctrl_verdicts)))

# %% [markdown]
# ## 8. What held and what did not
#
# The statements below are computed from this run.

# %%
display(Markdown(study.views.findings_text(gv, checks, lv, flip_v, ctrl_verdicts)))

_ = cx.write_section(results_dir, "theory", study.views.summary(
    ctx, gauss, gv, lin, lv, checks, flip_sums, flip_v,
    study.views.controls_record(target, cal, atk, ctrl_rows, closed, ctrl_verdicts)))
