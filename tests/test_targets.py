"""Chapter 04, round 2 (issue 15): the margin-keeping ablations keep and destroy what their rows say, and the
property table gives known answers on a hand-made case. Every destroy check is also run on the identity
(the full target), which must fail it."""
import math

import pytest
import torch

from atlib.studies.distillation import targets as dt

N, K = 4000, 10
NEW = ("class_permuted_nonmax", "uniform_tail", "shuffle_tail")


@pytest.fixture(scope="module")
def teachers():
    """Synthetic teachers (as in test_distill): AT logits small, standard ones larger and correlated."""
    g = torch.Generator().manual_seed(0)
    at = torch.randn(N, K, generator=g) * 1.5
    std = 2.5 * at + torch.randn(N, K, generator=g) * 2.0
    return dt.TeacherLogits(at, std, at.argmax(1).clone())


def class_map_of(ref, p):
    """Per sample, where each class's probability went: dest[i, j] = the class of ``p`` holding ref[i, j]
    (the values of a row are distinct, so the map is recovered exactly)."""
    return (p[:, None, :] == ref[:, :, None]).double().argmax(dim=2)


def tail_kendall(ref, p):
    """Per sample, Kendall τ-a between ``ref`` and ``p`` over the classes other than ref's top two."""
    idx = dt._tail_index(ref)
    a, b = ref.gather(1, idx), p.gather(1, idx)
    da, db = torch.sign(a[:, :, None] - a[:, None, :]), torch.sign(b[:, :, None] - b[:, None, :])
    m = a.shape[1]
    return (da * db).sum(dim=(1, 2)) / (m * (m - 1))


def check_destroys_rivals(ref, p):
    """class_permuted_nonmax's destroy check: no sample keeps the full target's runner-up as its runner-up,
    and no non-max class keeps its own probability."""
    assert float(dt.runner_up_agrees(ref, p).double().mean()) == 0, "runner-up class kept"
    nonmax = torch.ones_like(ref, dtype=torch.bool).scatter(1, ref.argmax(1, keepdim=True), False)
    assert not (p == ref)[nonmax].any(), "a non-max class kept its own probability"


def check_destroys_tail_order(ref, p):
    tau = float(tail_kendall(ref, p).mean())
    assert abs(tau) < 0.05, f"tail ordering kept: mean Kendall τ = {tau:.3f}"


# ----------------------------------------------------------------------------------- the three ablations
@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("T", [1.0, 4.0, 30.0])
def test_new_ablations_are_distributions_seeded_per_teacher_seed(teachers, name, T):
    p = dt.targets(name, teachers, T, seed=3)
    assert p.shape == (N, K) and p.dtype == torch.float64 and torch.all(p >= 0)
    assert torch.allclose(p.sum(1), torch.ones(N, dtype=torch.float64), atol=1e-12)
    assert torch.equal(p, dt.targets(name, teachers, T, seed=3)), "drawn once per seed: the same every epoch"
    if name != "uniform_tail":
        assert not torch.equal(p, dt.targets(name, teachers, T, seed=4)), "another teacher seed, another draw"


@pytest.mark.parametrize("T", [4.0, 30.0])
def test_class_permuted_nonmax_keeps_every_value_and_destroys_the_rivals(teachers, T):
    ref, p = dt.full(teachers, T), dt.class_permuted_nonmax(teachers, T, seed=0)
    assert torch.equal(p.sort(dim=1).values, ref.sort(dim=1).values), "every sorted value kept (gap, entropy)"
    assert torch.equal(p.argmax(1), ref.argmax(1)), "top class kept"
    check_destroys_rivals(ref, p)
    with pytest.raises(AssertionError, match="runner-up class kept"):
        check_destroys_rivals(ref, ref)


def test_class_permuted_nonmax_is_one_map_per_top_class(teachers):
    """Two samples with the same top class get the same map (a learnable function of the input); the maps of
    different top classes differ; the maps do not depend on T."""
    ref, p = dt.full(teachers, 4.0), dt.class_permuted_nonmax(teachers, 4.0, seed=0)
    dest, top = class_map_of(ref, p), ref.argmax(1)
    maps = {}
    for c in range(K):
        rows = dest[top == c]
        assert len(rows) > 50 and torch.equal(rows, rows[:1].expand_as(rows)), f"top class {c}: not one map"
        assert int(rows[0, c]) == c and sorted(rows[0].tolist()) == list(range(K)), "a permutation fixing c"
        maps[c] = rows[0]
    assert len({tuple(m.tolist()) for m in maps.values()}) > 1, "one global permutation, not one per class"
    assert torch.equal(torch.stack([maps[c] for c in range(K)]), dt.class_maps(K, 0))
    p30 = dt.class_permuted_nonmax(teachers, 30.0, seed=0)
    assert torch.equal(class_map_of(dt.full(teachers, 30.0), p30), dest), "the same maps at every T"


def test_class_maps_are_derangements_of_the_other_classes():
    for seed in range(20):
        maps = dt.class_maps(3, seed)  # K = 3: the only derangement of two classes is their swap
        assert maps.tolist() == [[0, 2, 1], [2, 1, 0], [1, 0, 2]]
    maps = dt.class_maps(K, 7)
    assert torch.equal(maps.diagonal(), torch.arange(K))
    off = ~torch.eye(K, dtype=torch.bool)
    assert not (maps == torch.arange(K))[off].any(), "no non-max class maps to itself"


@pytest.mark.parametrize("name", ["uniform_tail", "shuffle_tail"])
def test_tail_ablations_keep_the_top_two(teachers, name):
    T = 4.0
    ref, p = dt.full(teachers, T), dt.targets(name, teachers, T, seed=0)
    assert torch.equal(p.topk(2, dim=1).indices, ref.topk(2, dim=1).indices), "top-1 and top-2 classes kept"
    assert torch.equal(p.topk(2, dim=1).values, ref.topk(2, dim=1).values), "their probabilities kept exactly"
    assert float(dt.runner_up_agrees(ref, p).double().mean()) == 1.0


def test_uniform_tail_flattens_the_other_classes(teachers):
    ref, p = dt.full(teachers, 4.0), dt.uniform_tail(teachers, 4.0)
    tail = dt._tail_index(ref)
    assert float(p.gather(1, tail).var(dim=1).max()) < 1e-30, "the K−2 others share the rest evenly"
    assert float(ref.gather(1, tail).var(dim=1).mean()) > 1e-5, "the reference's tail was not flat"
    want = (1 - ref.topk(2, dim=1).values.sum(1)) / (K - 2)
    assert torch.allclose(p.gather(1, tail)[:, 0], want, rtol=1e-12, atol=0)


def test_shuffle_tail_keeps_values_and_destroys_the_tail_ordering(teachers):
    ref, p = dt.full(teachers, 4.0), dt.shuffle_tail(teachers, 4.0, seed=0)
    tail = dt._tail_index(ref)
    assert torch.equal(p.gather(1, tail).sort(1).values, ref.gather(1, tail).sort(1).values), "tail multiset kept"
    check_destroys_tail_order(ref, p)
    with pytest.raises(AssertionError, match="tail ordering kept"):
        check_destroys_tail_order(ref, ref)


# -------------------------------------------------------------------------------------- property table
def test_target_properties_on_a_hand_made_case():
    """Three samples, K = 4, T = 2: every entry by hand."""
    full = torch.tensor([[0.45, 0.30, 0.15, 0.10], [0.10, 0.50, 0.25, 0.15], [0.10, 0.20, 0.30, 0.40]],
                        dtype=torch.float64)
    p = torch.tensor([[0.45, 0.10, 0.15, 0.30],  # non-max order reversed, runner-up moved to class 3
                      [0.10, 0.50, 0.25, 0.15],  # identical
                      [0.10, 0.10, 0.10, 0.70]], dtype=torch.float64)  # flat non-max: no runner-up named
    got = dt.target_properties(p, full, T=2.0)
    ent = [-sum(x * math.log(x) for x in row) for row in p.tolist()]
    want = {"mean_top": (0.45 + 0.5 + 0.7) / 3, "mean_runner_up": (0.30 + 0.25 + 0.10) / 3,
            "mean_gap_logits": 2 * (math.log(0.45 / 0.30) + math.log(2) + math.log(7)) / 3,
            "entropy": sum(ent) / 3,
            "rho_top_full": -0.5,  # ranks (1, 2, 3) against (2, 3, 1)
            "tau_nonmax_full": (-1 + 1 + 0) / 3, "runner_up_eq_full": 1 / 3}
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_target_properties_of_the_full_target_and_of_one_hot_rows():
    full = torch.softmax(torch.randn(50, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1)
    same = dt.target_properties(full, full, T=4.0)
    assert same["rho_top_full"] == pytest.approx(1) and same["tau_nonmax_full"] == pytest.approx(1)
    assert same["runner_up_eq_full"] == 1
    hard = dt.target_properties(torch.nn.functional.one_hot(full.argmax(1), 5).double(), full, T=4.0)
    assert hard["mean_gap_logits"] == math.inf and hard["entropy"] == 0 and hard["runner_up_eq_full"] == 0
    assert math.isnan(hard["rho_top_full"]), "a constant top probability has no rank correlation"


def test_uniform_nonmax_widens_the_runner_up_gap(teachers):
    """The issue's arithmetic: flattening puts the runner-up T·ln((K−1)p/(1−p)) below the top."""
    T = 4.0
    ref, p = dt.full(teachers, T), dt.uniform_nonmax(teachers, T)
    top = ref.max(1).values
    want = float((T * torch.log((K - 1) * top / (1 - top))).mean())
    got = dt.target_properties(p, ref, T)
    assert got["mean_gap_logits"] == pytest.approx(want, rel=1e-9)
    assert got["mean_gap_logits"] > dt.target_properties(ref, ref, T)["mean_gap_logits"] + 0.5


def test_property_records_cover_every_ablation_and_separate_the_new_ones(teachers):
    rows = dt.property_records(teachers, (4.0, 30.0), seed=0)
    assert [(r["ablation"], r["T"]) for r in rows] == [(a, T) for T in (4.0, 30.0) for a in dt.ABLATIONS]
    by = {(r["ablation"], r["T"]): r for r in rows}
    for T in (4.0, 30.0):
        full, perm = by["full", T], by["class_permuted_nonmax", T]
        for k in ("mean_top", "mean_runner_up", "mean_gap_logits", "entropy"):
            assert perm[k] == pytest.approx(full[k], rel=1e-12), f"class_permuted_nonmax changed {k}"
            assert by["shuffle_tail", T][k] == pytest.approx(full[k], rel=1e-12), f"shuffle_tail changed {k}"
        assert perm["runner_up_eq_full"] == 0 and full["runner_up_eq_full"] == 1
        for name in ("uniform_tail", "shuffle_tail"):
            assert by[name, T]["runner_up_eq_full"] == 1
            assert by[name, T]["mean_gap_logits"] == pytest.approx(full["mean_gap_logits"], rel=1e-12)
        assert by["shuffle_nonmax", T]["runner_up_eq_full"] < 0.2, "a random runner-up, about 1 in K−1"
        assert math.isnan(by["uniform_confidence", T]["rho_top_full"]), "constant top: ρ undefined, not noise"
