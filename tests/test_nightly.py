"""Nightly suites: the suite file, the statistical regression rules, pinned baselines on a fixture
MLflow store, and two real nights with a planted fault."""

import time

import pytest

from harness import nightly, tracking
from harness.config import UsageError
from helpers import run_cli
from reports import analyze

LADDER = (1e-4, 1e-3, 1e-2)
SUITE = "suite: s\ntask: gsm8k\npreset: smoke\nmethods: all\n"


def write(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,needle", [
    ("task: gsm8k\npreset: smoke\nmethods: all\n", "field suite is missing"),
    ("suite: s\npreset: smoke\nmethods: all\n", "field task is missing"),
    ("suite: s\ntask: gsm8k\nmethods: all\n", "field preset is missing"),
    ("suite: s\ntask: gsm8k\npreset: smoke\n", "field methods is missing"),
    (SUITE + "seedz: 2\n", "unknown field 'seedz'"),
    ("suite: [s\n", "not valid YAML"),
    ("suite: my suite\ntask: gsm8k\npreset: smoke\nmethods: all\n", "field suite must be a name"),
    ("suite: s\ntask: gsm9k\npreset: smoke\nmethods: all\n", "field task: unknown task 'gsm9k'"),
    ("suite: s\ntask: gsm8k\npreset: huge\nmethods: all\n", "field preset: unknown preset 'huge'"),
    ("suite: s\ntask: gsm8k\npreset: smoke\nmethods: [lora, lorax]\n", "field methods: unknown method 'lorax'"),
    ("suite: s\ntask: gsm8k\npreset: smoke\nmethods: 3\n", "field methods must be"),
    (SUITE + "seeds: two\n", "field seeds must be a whole number > 0, got 'two'"),
    (SUITE + "seeds: 0\n", "field seeds must be a whole number"),
    (SUITE + "lrs: [1e-4, -1]\n", "field lrs must be a list of positive numbers"),
    (SUITE + "lrs: 1e-4\n", "field lrs must be a list"),
    (SUITE + "metric: loss\n", "field metric: use val_loss, accuracy or auto, got 'loss'"),
    (SUITE + "loss_tol: 5%\n", "field loss_tol must be a fraction in \\[0, 1\\)"),
    (SUITE + "acc_tol: 2\n", "field acc_tol must be a fraction"),
    (SUITE + "search: random\n", "field search: use grid or optuna"),
    (SUITE + "cpus_per_trial: -1\n", "field cpus_per_trial must be a number >= 0"),
    (SUITE + "storage: 3\n", "field storage must be text"),
    (SUITE + "overrides: {stepz: 8}\n", "unknown override 'stepz'"),
    (SUITE + "overrides: {steps: [8]}\n", "field overrides.steps must be a number or text"),
    (SUITE + "overrides: 8\n", "field overrides must be a mapping"),
    (SUITE + "baseline: \"x' or '1\"\n", "field baseline must be a name"),
])
def test_bad_suite_names_the_field(tmp_path, text, needle):
    with pytest.raises(UsageError, match=needle):
        nightly.load_suite(write(tmp_path, text))


def test_bad_suite_is_refused_before_anything_runs(tmp_path, data_dir):
    base = f"suite: s\ntask: gsm8k\npreset: smoke\nmethods: lora\ndata_dir: {data_dir}\nstorage: {tmp_path / 'runs'}\n"
    proc = run_cli("nightly", "--config", write(tmp_path, base + "overrides: {steps: 0}\n"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "suite.yaml: steps must be a number > 0, got 0" in proc.stderr
    # an unknown baseline night is refused before the sweep starts
    proc = run_cli("nightly", "--config", write(tmp_path, base + "baseline: s-19990101-000000\n"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "field baseline: no night named 's-19990101-000000' of suite s" in proc.stderr
    assert not list((tmp_path / "runs").glob("s-*"))
    proc = run_cli("nightly", "--config", write(tmp_path, base), "--pin", "s-19990101-000000")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no night named 's-19990101-000000' of suite s" in proc.stderr


# --- the regression rules on analyses of synthetic nights ---------------------------------------

def night(best, *, spread=0.002, seeds=3, others=(1.3, 1.2), method="lora", status=None):
    """Trial rows of one night: the method at LADDER, best loss at 1e-3, seeds at -/0/+spread
    relative; status {lr: 'diverged'} plants failures."""
    losses = dict(zip(LADDER, (others[0], best, others[1])))
    return [{"method": method, "lr": lr, "seed": s, "hparams": {}, "history": [],
             "status": (status or {}).get(lr, "finished"), "val_loss": loss * (1 + spread * (s - 1))}
            for lr, loss in losses.items() for s in range(seeds)]


def accuracy_night(acc, n=200):
    """One seed per rung, scored on n questions: the question sample is the only known noise."""
    return [{"method": "lora", "lr": lr, "seed": 0, "hparams": {}, "history": [], "status": "finished",
             "val_loss": 1.0, "gsm8k_flexible": p, "gsm8k_n": n}
            for lr, p in zip(LADDER, (acc - 0.1, acc, acc - 0.15))]


def test_best_score_worse_beyond_noise_is_a_regression():
    base = analyze(night(1.00))
    assert nightly.regressions(analyze(night(1.002)), base) == []        # within noise
    found = nightly.regressions(analyze(night(1.01)), base)              # 1%: beyond noise (~0.36%)
    assert len(found) == 1 and "lora: best val loss 1.01 vs 1" in found[0] and "worse beyond noise" in found[0]
    assert nightly.regressions(analyze(night(0.99)), base) == []         # better beyond noise: fine
    noisy = analyze(night(1.00, spread=0.05))                            # the same 1% in 5% seed noise
    assert nightly.regressions(analyze(night(1.01, spread=0.05)), noisy) == []


def test_accuracy_uses_the_question_noise():
    base = analyze(accuracy_night(0.40), metric="accuracy")
    assert nightly.regressions(analyze(accuracy_night(0.36), metric="accuracy"), base) == []  # 4 of 200: noise
    found = nightly.regressions(analyze(accuracy_night(0.25), metric="accuracy"), base)
    assert len(found) == 1 and "best accuracy 25% vs 40%" in found[0] and "noise: questions" in found[0]


def test_unknown_noise_falls_back_to_the_tolerance():
    base = analyze(night(1.00, seeds=1))
    assert nightly.regressions(analyze(night(1.04, seeds=1)), base) == []   # within 5%
    found = nightly.regressions(analyze(night(1.06, seeds=1)), base)
    assert len(found) == 1 and "worse beyond tolerance (noise unknown)" in found[0]


def test_window_narrowing_counts_only_beyond_noise():
    base = analyze(night(1.00, others=(1.3, 1.04), spread=0.02))          # window [1e-3, 1e-2]
    assert base["methods"]["lora"]["window"]["decades"] == pytest.approx(1.0)
    edge = analyze(night(1.00, others=(1.3, 1.055), spread=0.02))          # 0.5% past the 5% line, 2% noise
    assert edge["methods"]["lora"]["window"]["decades"] == 0
    assert nightly.regressions(edge, base) == []
    far = nightly.regressions(analyze(night(1.00, others=(1.3, 1.2), spread=0.02)), base)
    assert far == ["lora: robust window 0.00 decades vs 1.00; out: 1e-2 1.2"]
    broke = nightly.regressions(analyze(night(1.00, others=(1.3, 1.04), spread=0.02, status={1e-2: "diverged"})), base)
    assert "out: 1e-2 diverged" in broke[0] and "lora: 3 diverged trials vs 0" in broke[1]


def test_no_usable_learning_rate_and_failures():
    base = analyze(night(1.00))
    dead = analyze(night(1.00, status={lr: "diverged" for lr in LADDER}))
    found = nightly.regressions(dead, base)
    assert found == ["lora: no usable learning rate tonight (best was 1)", "lora: 9 diverged trials vs 0"]


# --- pinned baselines on a fixture MLflow store -------------------------------------------------

def record(mlf, exp, name, rows, start, suite="drift"):
    """A night recorded as the tracker records one: parent run, trial runs, a summary run."""
    from mlflow.entities import Metric, Param
    parent = mlf.create_run(exp, run_name=name, start_time=start, tags={
        "harness.sweep": name, "harness.kind": "sweep", "harness.suite": suite}).info.run_id
    mlf.log_param(parent, "trial.eval_limit", "0")
    now = int(time.time() * 1000)
    for r in rows:
        run = mlf.create_run(exp, start_time=start, tags={"harness.sweep": name, "mlflow.parentRunId": parent,
                                                          "harness.kind": "trial", "status": r["status"]}).info.run_id
        mlf.log_batch(run, params=[Param("method", r["method"]), Param("lr", str(r["lr"])), Param("seed", str(r["seed"]))],
                      metrics=[Metric("val_loss", r["val_loss"], now, 8)])
    summary = mlf.create_run(exp, start_time=start, tags={"harness.sweep": name, "mlflow.parentRunId": parent,
                                                          "harness.kind": "summary"}).info.run_id
    mlf.log_batch(summary, params=[Param("method", "lora")], metrics=[Metric("val_loss_mean", 9.0, now, 1)])
    mlf.set_terminated(parent, "FINISHED")


@pytest.fixture
def drift(tmp_path):
    """Six nights drifting 0.2% a night: within noise night to night, 1% from the first to the last."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = tracking.client(uri)
    exp = tracking.experiment_id(mlf, "gsm8k")
    names = [f"drift-{i}" for i in range(6)]
    for i, name in enumerate(names):
        record(mlf, exp, name, night(1.0 * 1.002 ** i), start=1_700_000_000_000 + i * 86_400_000)
    suite = {"suite": "drift", "task": "gsm8k", "metric": "val_loss", "loss_tol": 0.05, "acc_tol": 0.02}
    return uri, mlf, names, suite


def test_pin_marks_the_baseline_and_the_newest_pin_wins(drift):
    uri, mlf, names, suite = drift
    exp = mlf.get_experiment_by_name("gsm8k").experiment_id
    assert nightly.baseline_night(mlf, exp, suite) is None
    nightly.pin(uri, suite, names[1])
    nightly.pin(uri, suite, names[0])
    assert nightly.baseline_night(mlf, exp, suite) == names[0]
    assert nightly.baseline_night(mlf, exp, {**suite, "baseline": names[2]}) == names[2]  # the file's wins
    with pytest.raises(UsageError, match="no night named 'drift-9' of suite drift.*pick one such as drift-5"):
        nightly.pin(uri, suite, "drift-9")
    with pytest.raises(UsageError, match="no night named 'drift-1' of suite other"):
        nightly.pin(uri, {**suite, "suite": "other"}, names[1])


def test_slow_drift_is_caught_against_the_pinned_baseline(drift):
    uri, mlf, names, suite = drift
    tonight = names[-1]
    _, rows, _, section, found = nightly.judge(uri, suite, tonight)
    assert found == [] and len(rows) == 9                                  # the summary run is no trial
    assert "No baseline: pin a night" in section[2]
    nightly.pin(uri, suite, names[0])
    parent, _, _, section, found = nightly.judge(uri, suite, tonight)
    heading, body, md = section
    assert f"Against last night ({names[-2]}): no regression. lora +0.00202 (within noise)." in md
    assert f"Against baseline ({names[0]}): 1 regression(s)." in md
    assert len(found) == 1 and "lora: best val loss 1.01 vs 1" in found[0] and "worse beyond noise" in found[0]
    assert "Vs baseline" in body and body.count("data:image/png;base64,") == 1
    tags = mlf.get_run(parent).data.tags
    assert (tags["harness.regressions"], tags["harness.regressions_baseline"], tags["harness.baseline"]) == \
        ("0", "1", names[0])


def test_trend_plot_marks_the_baseline():
    nights = [(f"n{i}", analyze(night(1.0 + i / 100))) for i in range(3)]
    assert nightly.trend_plot(nights, "n0") != nightly.trend_plot(nights, None)


# --- real nights --------------------------------------------------------------------------------

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
    assert "No earlier night of this suite" in first.stdout and "No baseline" in first.stdout
    name = first.stdout.split("sweep ", 1)[1].split(",")[0]
    pinned = run_cli("nightly", "--config", config, "--pin", name)
    assert pinned.returncode == 0 and f"{name} is the baseline now" in pinned.stdout, pinned.stderr
    monkeypatch.setenv("HARNESS_FAULT", "nan@3,method=lora")  # every lora trial now diverges
    second = run_cli("nightly", "--config", config)
    assert second.returncode == 1, second.stderr[-3000:]
    for label in ("last night", "baseline"):
        verdict = second.stdout.split(f"Against {label} ({name}): ")[1].split("\n\n")[0]
        assert verdict.startswith("2 regression(s).")
        assert "lora: no usable learning rate" in verdict and "lora: 3 diverged trials vs 0" in verdict
        assert "riemannian:" not in verdict
    page = sorted((tmp_path / "runs").glob("smoke-nightly-*/report/report.html"))[-1].read_text()
    assert "Vs baseline" in page and page.count('alt="best score per method over the last nights"') == 1
