"""Search spaces: the shipped files load, and broken ones name the file and the field."""

import shutil

import pytest

import methods
from harness import spaces
from harness.config import UsageError


def test_every_method_has_a_valid_space():
    loaded = spaces.load()
    assert set(loaded) == set(methods.names())
    for preset in ("smoke", "cpu", "gpu", "paper"):
        assert spaces.ladder(preset) == sorted(spaces.ladder(preset))


def test_plan_is_the_grid_of_distinct_trainings():
    plan = spaces.plan(["lora-one"], "gpu", [1e-4, 2e-4], [0, 1])
    # gpu grid: gamma 2 x (precondition on: reg 2 x update 2, off: reg and update change nothing),
    # times 2 lrs x 2 seeds
    assert len(plan) == 2 * (4 + 1) * 4
    assert {p["hparams"]["precondition"] for p in plan} == {True, False}
    assert {p["hparams"]["update"] for p in plan if p["hparams"]["precondition"]} == {"peft", "reference"}
    off = [p for p in plan if not p["hparams"]["precondition"]]
    assert len({(p["hparams"]["gamma"], p["lr"], p["seed"]) for p in off}) == len(off) == 2 * 4


@pytest.mark.parametrize("text,needle", [
    ("method: lora\ngrid: [1, 2\n", "not valid YAML"),
    ("grid: {}\n", "field method is missing"),
    ("method: no-such-method\ngrid: {}\n", "field method"),
    ("method: riemannian\ngrid:\n  regg: [1.0e-6]\n", "grid.regg"),
    ("method: riemannian\ngrid:\n  reg: [-1]\n", "grid.reg"),
    ("method: riemannian\ngrid:\n  reg: 1.0e-6\n", "grid.reg must be a non-empty list"),
    ("method: riemannian\ngpu2:\n  reg: [1.0e-6]\n", "unknown field 'gpu2'"),
])
def test_broken_space_names_file_and_field(tmp_path, text, needle):
    shutil.copy(spaces.FOLDER / "_ladders.yaml", tmp_path)
    (tmp_path / "broken.yaml").write_text(text)
    with pytest.raises(UsageError, match=needle) as err:
        spaces.load(tmp_path)
    assert "broken.yaml" in str(err.value)
