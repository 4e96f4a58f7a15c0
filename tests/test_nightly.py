"""Nightly suites: the suite file, the regression rules, and two real nights with a planted fault."""


import pytest

from harness import nightly
from harness.config import UsageError
from helpers import run_cli


def write(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,needle", [
    ("task: gsm8k\npreset: smoke\nmethods: all\n", "field suite is missing"),
    ("suite: s\npreset: smoke\nmethods: all\n", "field task is missing"),
    ("suite: s\ntask: gsm8k\nmethods: all\n", "field preset is missing"),
    ("suite: s\ntask: gsm8k\npreset: smoke\n", "field methods is missing"),
    ("suite: s\ntask: gsm8k\npreset: smoke\nmethods: all\nseedz: 2\n", "unknown field 'seedz'"),
    ("suite: [s\n", "not valid YAML"),
])
def test_bad_suite_names_the_field(tmp_path, text, needle):
    with pytest.raises(UsageError, match=needle):
        nightly.load_suite(write(tmp_path, text))


def analysis(best, decades, diverged=0, failed=0, lower=True):
    method = {"best_score": best, "window": {"decades": decades} if best is not None else None,
              "diverged": diverged, "failed": failed}
    return {"lower_is_better": lower, "loss_tol": 0.05, "acc_tol": 0.02, "methods": {"lora": method}}


def test_regression_rules():
    base = analysis(1.00, 1.0)
    assert nightly.regressions(analysis(1.04, 1.0), base) == []           # within 5%
    assert "best val loss" in nightly.regressions(analysis(1.06, 1.0), base)[0]
    assert "robust window" in nightly.regressions(analysis(1.0, 0.5), base)[0]
    assert "1 diverged" in nightly.regressions(analysis(1.0, 1.0, diverged=1), base)[0]
    assert "no usable learning rate" in nightly.regressions(analysis(None, None, diverged=3), base)[0]
    acc = analysis(0.40, 1.0, lower=False)
    assert nightly.regressions(analysis(0.39, 1.0, lower=False), acc) == []  # within 2 points
    assert "best accuracy" in nightly.regressions(analysis(0.37, 1.0, lower=False), acc)[0]


def test_second_night_with_a_planted_regression_fails(tmp_path, data_dir, monkeypatch):
    config = write(tmp_path, f"""suite: smoke-nightly
task: gsm8k
preset: smoke
methods: [lora, riemannian]
data_dir: {data_dir}
storage: {tmp_path / 'runs'}
cpus_per_trial: 1
overrides: {{steps: 8, eval_interval: 4, eval_limit: 0}}
""")
    first = run_cli("nightly", "--config", config)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "First night of this suite" in first.stdout
    monkeypatch.setenv("HARNESS_FAULT", "nan@3,method=lora")  # every lora trial now diverges
    second = run_cli("nightly", "--config", config)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "regression" in second.stdout and "lora: no usable learning rate" in second.stdout
    assert "lora: 3 diverged trials vs 0" in second.stdout
    assert "riemannian" not in second.stdout.split("regression")[-1]
    page = sorted((tmp_path / "runs").glob("smoke-nightly-*/report/report.html"))[-1].read_text()
    assert "Since last night" in page and page.count("data:image/png;base64,") == 4
