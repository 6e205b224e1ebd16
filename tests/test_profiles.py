"""One settings tree per profile: built-in profiles, profiles derived in Python, and profiles from TOML files."""
import dataclasses
import subprocess
import sys

import pytest

from atlib.book import cli
from atlib.core.config import ConfigError, from_table
from atlib.studies import context as cx
from atlib.studies.profiles import PROFILES, UnknownProfileError, get_profile, load_profile, profile_toml
from atlib.studies.theory.settings import LinearSettings

OWN = """extends = "smoke"
name = "mine"
epochs = 3
seeds = [4, 5]
train_subset = 900

[theory.linear]
epochs = 2

[distill]
temperatures = [2.0, 8.0]
lrs = [0.02, 0.01]

[audit]
main_subset = "none"
"""


def _write(tmp_path, text, name="own.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_builtin_profile_round_trips_through_toml(tmp_path):
    for name, p in PROFILES.items():
        assert load_profile(_write(tmp_path, profile_toml(p), f"{name}.toml")) == p, name


def test_toml_overrides_in_the_nesting_of_the_dataclasses(tmp_path):
    p = get_profile(_write(tmp_path, OWN))
    base = PROFILES["smoke"]
    assert (p.name, p.epochs, p.seeds, p.train_subset) == ("mine", 3, (4, 5), 900)
    assert p.theory.linear == dataclasses.replace(base.theory.linear, epochs=2)
    assert p.theory.deep == base.theory.deep and p.confidence == base.confidence
    assert (p.distill.temperatures, p.distill.lrs) == ((2.0, 8.0), (0.02, 0.01))
    assert p.audit.main_subset is None and p.distill.student_width == base.distill.student_width
    assert p == dataclasses.replace(base, name="mine", epochs=3, seeds=(4, 5), train_subset=900,
                                    theory=dataclasses.replace(base.theory, linear=p.theory.linear),
                                    distill=dataclasses.replace(base.distill, temperatures=(2.0, 8.0), lrs=(0.02, 0.01)))
    assert load_profile(_write(tmp_path, 'extends = "smoke"\n', "named_by_file.toml")).name == "named_by_file"


@pytest.mark.parametrize("text, fragment", [
    ('extends = "smoke"\nepochz = 3\n', "unknown key 'epochz'; valid keys: name, description, dataset"),
    ('extends = "smoke"\n[theory.linear]\nepoch = 2\n', "unknown key 'theory.linear.epoch'; valid keys in [theory.linear]: n_train, epochs"),
    ('extends = "smoke"\n[bogus]\nx = 1\n', "unknown key 'bogus'"),
    ('extends = "smoke"\nepochs = "ten"\n', "epochs = 'ten': expected int"),
    ('extends = "smoke"\nepochs = 2.5\n', "epochs = 2.5: expected int"),
    ('extends = "smoke"\naugment = 1\n', "augment = 1: expected bool"),
    ('extends = "smoke"\ntrain_subset = "all"\n', 'train_subset = \'all\': expected int or "none"'),
    ('extends = "smoke"\nseeds = [0, "one"]\n', "seeds[1] = 'one': expected int"),
    ('extends = "smoke"\ntheory = 3\n', "theory must be a table"),
    ('extends = "smoke"\nepochs = 0\n', "'epochs': 0"),
    ('extends = "smoke"\ndataset = "imagenet"\n', "dataset='imagenet' (one of digits, fashion, mnist, cifar10)"),
    ('extends = "smoke"\narch = "vit"\n', "arch='vit' (one of"),
    ('extends = "smoke"\n[confidence]\nselect_on = "test"\n', "select_on='test': one of holdout, train"),
    ('extends = "smoke"\n[distill]\ntemperatures = [4.0]\n', "need one lr per temperature"),
    ('extends = "smoke"\n[audit]\nlinf_grid = [0.0, 0.1]\n', "linf_grid"),
    ('extends = "smoke"\nlinf_eps = 0.3\n', "must start above the profile's L∞ ε"),
    ('extends = "smoke"\nlinf_sweep = [0, 7.0]\n', "linf_sweep = [0.0, 7.0]: need at least one L∞ ε, each in [0, 1]"),
    ('extends = "smoke"\nlinf_sweep = []\n', "linf_sweep = []: need at least one L∞ ε"),
    ('extends = "smoke"\nlinf_eps = 1.5\n', "linf_eps = 1.5: the main L∞ ε must lie in (0, 1]"),
    ('extends = "smoke"\nlr = inf\n', "lr = inf: the learning rate must be finite and > 0"),
    ('extends = "smoke"\nlr = nan\n', "lr = nan: the learning rate must be finite and > 0"),
    ('extends = "smoke"\nweight_decay = inf\n', "weight_decay = inf: must be finite and >= 0"),
    ('extends = "smoke"\nl2_eps = 1000\n', "l2_eps = 1000.0: an L2 ε must be > 0 and at most the diameter of the "
                                          "digits images, sqrt(C·H·W) = sqrt(1·8·8) = 8"),
    ('extends = "fashion"\nl2_eps = 28.01\n', "l2_eps = 28.01: an L2 ε must be > 0 and at most the diameter of the "
                                             "fashion images, sqrt(C·H·W) = sqrt(1·28·28) = 28"),
    ('extends = "smoke"\nl2_eps = 0\n', "l2_eps = 0.0: an L2 ε must be > 0"),
    ('extends = "imagenet"\n', "extends = 'imagenet' is not a built-in profile; valid: 'smoke', 'fashion'"),
    ('extends = ["smoke"]\n', "extends = ['smoke'] is not a built-in profile; valid: 'smoke'"),
    ('extends = "smoke"\n[audit]\nmain_subset = -5\n', 'bad main_subset=-5: at least 1 (or "none" for all)'),
    ('extends = "smoke"\nepochs = \n', "is not valid TOML"),
    ('name = "partial"\nepochs = 3\n', "missing keys"),
])
def test_bad_profile_files_name_the_key(tmp_path, text, fragment):
    with pytest.raises(UnknownProfileError) as e:
        get_profile(_write(tmp_path, text))
    assert fragment in str(e.value) and "own.toml" in str(e.value)


def test_threat_model_bounds_follow_the_registry_shape(tmp_path):
    """The largest L2 ε is the diameter of the profile's images (sqrt(C·H·W), from the dataset registry): accepted
    at it, rejected past it, per dataset; an L∞ ε of exactly 1 is the edge of [0, 1]."""
    for base, dataset, diameter in (("smoke", "digits", 8.0), ("fashion", "fashion", 28.0),
                                    ("cifar10", "cifar10", 3072 ** 0.5)):
        p = PROFILES[base]
        assert dataclasses.replace(p, l2_eps=diameter).l2_eps == diameter
        with pytest.raises(ValueError, match=rf"l2_eps = .*diameter of the {dataset} images"):
            dataclasses.replace(p, l2_eps=diameter * 1.001)
    assert dataclasses.replace(PROFILES["smoke"], linf_sweep=(0.0, 1.0)).linf_sweep == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"lr = inf: .*; linf_sweep = \[0.0, 1.5\]: "):
        dataclasses.replace(PROFILES["smoke"], lr=float("inf"), linf_sweep=(0.0, 1.5))  # every bad key, in one message


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(UnknownProfileError, match="does not exist"):
        get_profile(tmp_path / "nope.toml")
    with pytest.raises(UnknownProfileError, match="valid profiles: smoke, fashion, mnist, cifar10"):
        get_profile("imagenet")


def test_config_errors_are_value_errors_with_types_in_words():
    with pytest.raises(ConfigError, match=r"eps_sweep\[1\] = 'x': expected float"):
        from_table(LinearSettings, {"n_train": 1, "epochs": 1, "batch_size": 1, "lr": 0.1, "weight_decay": 0.0,
                                    "eps_sweep": [0.0, "x"], "pgd_steps": 1})
    assert from_table(LinearSettings, {"n_train": 1, "epochs": 1, "batch_size": 1, "lr": 1, "weight_decay": 0,
                                       "eps_sweep": [0, 0.1], "pgd_steps": 1, "check_n": 10, "check_steps": 2,
                                       "bound_steps": 2}).lr == 1.0  # ints widen to float


def test_toml_errors_spell_values_as_toml_does(tmp_path):
    """The dataclasses' checks are written in Python; a profile file's reader sees TOML's words."""
    with pytest.raises(UnknownProfileError) as e:
        get_profile(_write(tmp_path, 'extends = "smoke"\n[audit]\nstudent_seeds = 0\n'))
    assert '"none"' in str(e.value) and "None" not in str(e.value)


def test_cli_rejects_a_bad_profile_file_before_anything_runs(tmp_path, capsys):
    for text in ('extends = ["smoke"]\n', 'extends = "smoke"\n[audit]\nmain_subset = -5\n'):
        assert cli.main(["compute", "--profile", str(_write(tmp_path, text)), "--cache-dir", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    bad = _write(tmp_path, 'extends = "smoke"\n[distill]\nepochz = 3\n')
    for cmd in ("book", "compute"):
        assert cli.main([cmd, "--profile", str(bad), "--out" if cmd == "book" else "--cache-dir",
                         str(tmp_path / cmd)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "unknown key 'distill.epochz'" in err and "temperatures" in err
        assert not (tmp_path / cmd).exists()  # nothing was written
    out = subprocess.run([sys.executable, "-m", "atlib", "compute", "--profile", str(bad)], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "distill.epochz" in out.stderr


def test_no_lookup_by_profile_name(tmp_path):
    """A derived profile, renamed, reaches every chapter's settings through the one tree."""
    p = dataclasses.replace(PROFILES["smoke"], name="renamed")
    ctx = cx.context(p, tmp_path, device="cpu", workers=1)
    assert ctx.profile.theory is p.theory and ctx.profile.audit is p.audit and ctx.profile.confidence is p.confidence


@pytest.mark.slow
def test_derived_profile_runs_the_whole_book(tmp_path):
    """A profile derived in Python (renamed, shorter schedule) runs every chapter; the runner hands it to the
    chapters as its resolved TOML file, and summary.json and the provenance carry its settings."""
    import json

    from atlib.book.runner import run_book

    base = PROFILES["smoke"]
    p = dataclasses.replace(base, name="derived", epochs=8,
                            distill=dataclasses.replace(base.distill, epochs=3))
    summary = json.loads(run_book(p, tmp_path / "out", cache_dir=str(tmp_path / "cache"), html=False,
                                  workers=1).read_text())
    assert summary["profile"] == "derived" and summary["settings"]["epochs"] == 8
    assert summary["settings"]["distill"]["epochs"] == 3 and set(summary["chapters"]) == {
        "01_theory", "02_training", "03_confidence", "04_distillation", "05_evaluation"}
    assert load_profile(tmp_path / "out" / "profile.toml") == p
    nb = (tmp_path / "out" / "02_training.ipynb").read_text()
    assert "Every setting of this profile" in nb and 'name = \\"derived\\"' in nb
    assert not (tmp_path / "results").exists()
