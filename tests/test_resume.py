"""A resumed sweep keeps its saved settings; only where it runs may change."""

import pytest

from harness import resume
from harness.config import TrialConfig, UsageError
from harness.sweep import SweepConfig


def config(**changes) -> SweepConfig:
    trial = TrialConfig(method="lora", lr=1.0, preset=changes.pop("preset", "cpu"))
    return SweepConfig(methods=["lora"], trial=trial, **changes)


def test_saved_config_round_trips_and_repeating_a_flag_is_fine(tmp_path):
    saved = config(name="s", storage=str(tmp_path), lrs=[1e-4, 1e-3], tracking_uri="sqlite:///x.db")
    resume.save(saved)
    loaded = resume.load(str(tmp_path), "s")
    assert loaded.resume and loaded.lrs == [1e-4, 1e-3] and loaded.trial == saved.trial
    merged = resume.merge(loaded, config(lrs=[1e-4, 1e-3], address="10.0.0.1:6379"), config())
    assert merged.address == "10.0.0.1:6379" and merged.storage == str(tmp_path)


def test_a_flag_that_changes_what_runs_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--lrs 0.1 differs from sweep 's', saved with 0.0001"):
        resume.merge(config(name="s", lrs=[1e-4]), config(lrs=[0.1]), config())
    with pytest.raises(UsageError, match="--preset gpu differs"):
        resume.merge(config(name="s"), config(preset="gpu"), config())


def test_a_password_uri_must_be_given_again(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UsageError, match="give --tracking-uri"):
        resume.merge(config(name="s", tracking_uri="http://u:***@host"), config(), config())
    merged = resume.merge(config(name="s", tracking_uri="http://u:***@host"),
                          config(tracking_uri="http://u:pw@host"), config())
    assert merged.tracking_uri == "http://u:pw@host"
