"""Running the CLI as a user would, and reading what a sweep left in MLflow."""

import os
import subprocess
import sys


def run_cli(*args, timeout=900, env=None, **popen):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **popen)


def _runs(db_path, sweep, experiment):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{db_path}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`harness.sweep` = '{sweep}'",
                                      max_results=50000)


def sweep_runs(db_path, sweep: str, experiment: str = "gsm8k"):
    """(parent run, child runs of its trials) of a sweep in an SQLite MLflow store; the experiment is
    the task. The summary runs of seed groups are children too, but not trials: see summary_runs."""
    client, runs = _runs(db_path, sweep, experiment)
    parents = [r for r in runs if r.data.tags.get("harness.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.data.tags.get("harness.kind") != "summary"]
    return client, parents, children


def summary_runs(db_path, sweep: str, experiment: str = "gsm8k"):
    """The summary runs of a sweep's seed groups."""
    return [r for r in _runs(db_path, sweep, experiment)[1] if r.data.tags.get("harness.kind") == "summary"]
