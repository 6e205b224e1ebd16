"""``python -m atlib bench`` at a tiny size on the CPU: it runs and reports sane fields (timings never asserted)."""
import json

import pytest
import torch

from atlib.book.cli import main
from atlib.training.bench import BenchConfig, at_step_flops, make_model, reference_epoch, synthetic_data


def test_bench_runs_and_reports_sane_fields(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "small_cnn", "--batch-size", "8", "--steps", "1", "--n-images", "16",
                 "--repeats", "1", "--device", "cpu", "--threads", "1", "--json", str(out)]) == 0
    assert "speed-up" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"atlib", "reference"}
    assert res["params_atlib"] == res["params_reference"] > 0  # the same network in both loops
    for key in ("flops_per_image", "matmul_peak_tflops", "floor_s_per_50k"):
        assert res[key] > 0, key
    for row in res["rows"].values():
        for key in ("images_per_s", "s_per_50k_epoch", "speedup_vs_reference", "achieved_tflops", "times_floor"):
            assert row[key] > 0, key
    assert res["rows"]["reference"]["speedup_vs_reference"] == 1.0


def test_flops_positive_and_grow_with_steps():
    dev = torch.device("cpu")
    f1, f3 = (at_step_flops("small_cnn", 4, s, dev) for s in (1, 3))
    assert 0 < f1 < f3
    # each extra attack step is one forward and one input backward: the increments are equal
    assert at_step_flops("small_cnn", 4, 2, dev) - f1 == (f3 - f1) // 2


def test_reference_loop_trains_the_same_network():
    x, y = synthetic_data(8)
    model = make_model("small_cnn")
    before = [p.detach().clone() for p in model.parameters()]
    reference_epoch(model, x, y, BenchConfig(batch_size=4, steps=1, n_images=8, repeats=1), torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_atlib_side_trains_with_the_profiles_attack():
    """The timed atlib epoch must use the training attack the profiles use (last iterate, Madry step), not
    the evaluation one (keep_best costs an extra forward pass per step): else the comparison is unfair."""
    from atlib.studies.profiles import get_profile

    a = BenchConfig(batch_size=4, steps=7, n_images=8, repeats=1).attack
    train_attack = get_profile("fashion").train_config(get_profile("fashion").main_at).attack
    assert a.keep_best is train_attack.keep_best is False
    assert a.step_size == pytest.approx(2.5 * a.eps / 7) and a.random_start


@pytest.mark.parametrize("bad,frag", [({"model": "vgg"}, "unknown bench model 'vgg'"), ({"batch_size": 0}, "bad bench config"),
                                      ({"repeats": 0}, "bad bench config"), ({"steps": -1}, "bad bench config")])
def test_bad_bench_config_says_what_is_wrong(bad, frag):
    with pytest.raises(ValueError, match=frag):
        BenchConfig(**({"batch_size": 4, "steps": 1, "n_images": 8, "repeats": 1} | bad))


@pytest.mark.parametrize("width,input_grad", [(16, True), (8, False)])  # AT models' PGD step; students' step
def test_ensemble_bench_compares_equal_work(width, input_grad):
    from atlib.training.ensemble_bench import ensemble_vs_sequential

    r = ensemble_vs_sequential(n_models=2, batch_size=4, repeats=1, threads=None, width=width, input_grad=input_grad)
    assert r["n_models"] == 2 and r["sequential_s"] > 0 and r["vmap_s"] > 0
    assert r["width"] == width and r["input_grad"] == input_grad
    assert r["max_grad_diff"] < 1e-5, "vmap over stacked weights computes each model's own gradients"
