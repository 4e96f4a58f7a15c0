"""`harness report` on a fixture MLflow store whose scores are known, and the page in Chromium."""

import json
import shutil
import subprocess
import time

import pytest

from helpers import run_cli

LADDER = [1e-5, 1e-4, 1e-3, 1e-2]
# Final val losses per method and lr; None = diverged. Known answers below.
LOSSES = {"lora": [1.50, 1.00, 1.02, None], "pissa": [1.04, 1.00, 1.30, 1.40], "lora-one": [0.98, 0.97, None, None]}


def make_store(db):
    """A sweep recorded as the tracker records one: parent run, child runs, histories, tags."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    mlf = MlflowClient(f"sqlite:///{db}")
    exp = mlf.create_experiment("gsm8k", artifact_location=(db.parent / "artifacts").as_uri())
    parent = mlf.create_run(exp, run_name="known", tags={"harness.sweep": "known", "harness.kind": "sweep"}).info.run_id
    mlf.log_param(parent, "trial.eval_limit", "5")
    now = int(time.time() * 1000)
    for method, losses in LOSSES.items():
        for lr, loss in zip(LADDER, losses):
            run = mlf.create_run(exp, tags={"harness.sweep": "known", "mlflow.parentRunId": parent,
                                            "status": "diverged" if loss is None else "finished"}).info.run_id
            mlf.log_batch(run, params=[Param("method", method), Param("lr", str(lr)), Param("seed", "0"),
                                       Param("rank", "8")])
            curve = [2.0, 1.5, loss] if loss is not None else [2.0, 1.8]
            mlf.log_batch(run, metrics=[Metric("val_loss", v, now, step * 10) for step, v in enumerate(curve)])
            if loss is not None:
                mlf.log_batch(run, metrics=[Metric("gsm8k_flexible", 0.1, now, 20)])
            mlf.set_terminated(run)
    mlf.set_terminated(parent)
    return mlf, parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    mlf, parent = make_store(root / "mlflow.db")
    proc = run_cli("report", "known", "--storage", root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, mlf, parent, proc


def test_report_numbers_are_the_known_answers(report):
    root, _, _, proc = report
    assert proc.stdout.strip().endswith("known/report/report.html")
    data = json.loads((root / "known" / "report" / "report.json").read_text())
    m = data["methods"]
    assert data["metric"] == "val_loss"  # eval_limit 5 < 200: val loss decides
    assert m["lora"]["best_lr"] == 1e-4 and m["lora"]["best_score"] == 1.00
    assert (m["lora"]["window"]["low"], m["lora"]["window"]["high"]) == (1e-4, 1e-3)  # 1.02 <= 1.05
    assert m["lora"]["window"]["decades"] == pytest.approx(1.0)
    assert (m["pissa"]["window"]["low"], m["pissa"]["window"]["high"]) == (1e-5, 1e-4)
    assert m["lora-one"]["best_lr"] == 1e-4 and m["lora-one"]["diverged"] == 2
    assert data["reference_lr"] == 1e-4  # LoRA's best
    assert m["pissa"]["score_at_reference"] == 1.00
    assert data["target_loss"] == 1.00  # the loss every method reaches: the worst best-lr loss (lora, pissa)
    assert m["lora"]["steps_to_target"] == 20 and m["lora-one"]["steps_to_target"] == 20
    assert [r["method"] for r in data["ranking"]] == ["lora-one", "lora", "pissa"]


def test_report_is_attached_to_the_sweep_run(report):
    _, mlf, parent, _ = report
    names = sorted(a.path for a in mlf.list_artifacts(parent, "report"))
    assert names == ["report/report.html", "report/report.json", "report/report.md"]


def test_html_renders_with_all_plots_in_chromium(report, tmp_path):
    """The page as a browser shows it: every plot decoded, the verdict and the setting on top,
    and no 'nan' or 'None' anywhere in the text a reader sees."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is needed for this test: .ci/install installs Debian's chromium")
    page = (report[0] / "known" / "report" / "report.html").read_text()
    probe = """<script>window.addEventListener('load', () => { const imgs = [...document.images];
      const text = document.body.innerText;
      const words = text.match(/\\b(nan|NaN|None|undefined)\\b/g) || [];
      document.body.insertAdjacentHTML('beforeend', '<p id="probe">images=' + imgs.length + ' loaded=' +
        imgs.filter(i => i.complete && i.naturalWidth > 300).length +
        ' verdict=' + (document.querySelector('.verdict') || {innerText: ''}).innerText.startsWith('Verdict.') +
        ' setting=' + text.includes('Setting: task gsm8k') + ' bad=' + words.length + '</p>'); });</script>"""
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom",
                          (tmp_path / "probe.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="probe">images=3 loaded=3 verdict=true setting=true bad=0<' in dom


def test_report_reads_the_window_the_sweep_was_run_with(tmp_path):
    """A sweep run with --loss-tol 0.01 keeps that window in `harness report` unless told otherwise:
    lora's 1.02 at 1e-3 is 2% above its best, outside 1% and inside 5%."""
    from harness.report import analysis_of
    mlf, parent = make_store(tmp_path / "mlflow.db")
    mlf.log_param(parent, "loss_tol", "0.01")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert analysis_of(uri, "gsm8k", "known")[2]["methods"]["lora"]["window"]["high"] == 1e-4
    assert analysis_of(uri, "gsm8k", "known", loss_tol=0.05)[2]["methods"]["lora"]["window"]["high"] == 1e-3


def test_report_states_its_setting_and_why_this_score(report):
    md = (report[0] / "known" / "report" / "report.md").read_text()
    top = md.split("## Summary")[0]
    assert "**Verdict.** lora-one is best: validation loss 0.97 at lr 1e-4." in top
    # the fixture's parent run records only eval_limit: the setting says what it knows
    assert "Setting: task gsm8k; 5 test questions scored; 1 seed; ladder 1e-5, 1e-4, 1e-3, 1e-2 (4 rungs); " \
           "grid search, 12 trials." in top
    assert "Score: validation loss (lower is better), because only 5 GSM8K questions were scored per trial" in top


def test_parent_run_is_named_after_the_verdict_and_the_experiment_opens_on_runs(report):
    _, mlf, parent, _ = report
    assert mlf.get_run(parent).info.run_name == "known: lora-one is best: validation loss 0.97 at lr 1e-4"
    from harness import tracking
    tracking.experiment_id(mlf, "gsm8k")  # what every sweep calls: an older experiment gets the tag too
    assert mlf.get_experiment_by_name("gsm8k").tags["mlflow.experimentKind"] == "custom_model_development"
    link = tracking.runs_link(mlf.tracking_uri, "gsm8k", "known")
    assert link.startswith("http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&searchFilter=")
