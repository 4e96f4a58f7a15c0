"""`harness ui`: MLflow's server, whose first page opens a fresh browser on the sweep's trials."""

import json
import shutil
import subprocess

import pytest

from harness import tracking, ui
from harness.cli import ui_command
from services import answers, free_port, started, wait_for


def test_runs_table_shows_method_lr_seed_and_the_scores_logged():
    columns = ui.view({"val_loss", "gsm8k_flexible", "gsm8k_strict", "lr_now"})["selectedColumns"]
    assert columns == ["params.`method`", "params.`lr`", "params.`seed`", "metrics.`val_loss`",
                       "metrics.`gsm8k_flexible`"]
    assert ui.view(set())["orderByKey"] == "metrics.`val_loss`"


def test_script_fills_only_missing_keys_and_cannot_close_its_tag():
    text = ui.script({"k": json.dumps("</script><b>")}).decode()
    assert "s.getItem(k)===null" in text and text.count("</script>") == 1


def trial_store(tmp_path) -> tuple[str, str]:
    """A store with one sweep: its parent run and two finished trials."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = tracking.client(uri)
    exp = tracking.experiment_id(mlf, "gsm8k")
    parent = mlf.create_run(exp, run_name="s parent", tags={"harness.kind": "sweep"}).info.run_id
    for lr, loss in ((1e-3, 0.9), (1e-2, 0.8)):
        run = mlf.create_run(exp, run_name=f"lora lr={lr:g}",
                             tags={"harness.kind": "trial", "mlflow.parentRunId": parent}).info.run_id
        for key, value in dict(method="lora", lr=lr, seed=0, alpha=16, gamma=1).items():
            mlf.log_param(run, key, value)
        mlf.log_metric(run, "val_loss", loss)
        mlf.log_metric(run, "gsm8k_flexible", 0.1)
        mlf.set_terminated(run)
    return uri, exp


def test_a_fresh_browser_opens_the_experiment_on_its_trials(tmp_path):
    """Opened by its plain address, not the link the harness prints: the runs (not the GenAI
    overview), only the trials, best first, with method, lr, seed and score columns."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is needed for this test: .ci/install installs Debian's chromium")
    uri, exp = trial_store(tmp_path)
    port = free_port()
    argv, env = ui_command(uri, "127.0.0.1", port)
    with started(argv, tmp_path / "ui.log", env=env) as server:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), "harness ui", 180, server)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1600,900", "--virtual-time-budget=20000", "--dump-dom"]
        dom = subprocess.run([browser, *flags, f"http://127.0.0.1:{port}/#/experiments/{exp}"],
                             capture_output=True, text=True, timeout=180).stdout
    assert "<title>Runs - Experiment" in dom
    for shown in ("Sort: val_loss", ">method<", ">lr<", ">seed<", ">val_loss<", ">gsm8k_flexible<", ">2</strong> matching runs"):
        assert shown in dom, shown
    assert dom.index("lora lr=0.01<") < dom.index("lora lr=0.001<")  # best first
