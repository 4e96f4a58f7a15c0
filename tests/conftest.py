import os
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA_DIR = Path(os.environ.get("HARNESS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> str:
    if not (DATA_DIR / "gsm8k" / "train.jsonl").is_file():
        pytest.fail(f"GSM8K data not found under {DATA_DIR}: set HARNESS_DATA_DIR")
    return str(DATA_DIR)


@pytest.fixture
def smoke(data_dir, tmp_path):
    """A resolved smoke-preset TrialConfig factory writing under tmp_path."""
    from harness.config import TrialConfig
    from harness.tasks import resolve

    def make(method="lora", lr=1e-2, **fields):
        fields.setdefault("out", str(tmp_path / f"{method}-{lr:g}"))
        return resolve(TrialConfig(method=method, lr=lr, preset="smoke", data_dir=data_dir, **fields))
    return make
