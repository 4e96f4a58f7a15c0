"""Safe defaults: the UI is local only, model code from the hub is not run, tracking passwords
are neither recorded nor saved. (Unsafe YAML and secrets in a real sweep: test_cli, test_faults.)"""

import json
from unittest.mock import patch

import torch

from harness.cli import build_parser, config_from, ui_command
from harness.config import TrialConfig
from harness.tasks import resolve
from harness.resume import save
from harness.sweep import SweepConfig, run_params
from helpers import run_cli

TRIAL = ["trial", "--method", "lora", "--lr", "1e-3", "--preset", "smoke"]


def test_ui_binds_to_localhost_unless_told_otherwise():
    def host(*argv):
        args = build_parser().parse_args(["ui", *argv])
        command, _ = ui_command("sqlite:////tmp/mlflow.db", args.host, args.port)
        return command[command.index("--host") + 1]
    assert host() == "127.0.0.1"
    assert host("--host", "0.0.0.0") == "0.0.0.0"


def test_ui_keeps_the_store_password_out_of_the_process_list():
    command, env = ui_command("postgresql://user:s3cret@db/mlflow", "127.0.0.1", 5000)
    assert not any("s3cret" in part for part in command)
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://user:s3cret@db/mlflow"


def trial_config(*argv, data_dir=""):
    args = build_parser().parse_args([*TRIAL, "--data-dir", data_dir, *argv])
    return resolve(config_from(args, method=args.method, lr=args.lr))


def test_trust_remote_code_is_off_unless_the_flag_is_given(data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.train import prepare
    assert trial_config("--trust-remote-code", data_dir=data_dir).trust_remote_code is True
    cfg = trial_config(data_dir=data_dir)
    assert cfg.trust_remote_code is False
    with patch.object(AutoModelForCausalLM, "from_pretrained", wraps=AutoModelForCausalLM.from_pretrained) as model, \
            patch.object(AutoTokenizer, "from_pretrained", wraps=AutoTokenizer.from_pretrained) as tokenizer:
        prepare(cfg, torch.device("cpu"))  # what a trial loads
    assert model.call_args.kwargs["trust_remote_code"] is False
    assert tokenizer.call_args.kwargs["trust_remote_code"] is False


def test_tracking_password_is_neither_recorded_nor_saved(tmp_path):
    uri = "http://user:s3cret@127.0.0.1:9"
    sc = SweepConfig(methods=["lora"], trial=TrialConfig(method="lora", lr=1.0), name="s",
                     storage=str(tmp_path), tracking_uri=uri)
    (tmp_path / "s").mkdir()
    save(sc)
    assert run_params(sc)["tracking_uri"] == "http://user:***@127.0.0.1:9"
    assert "s3cret" not in json.dumps(run_params(sc)) + (tmp_path / "s" / "sweep.json").read_text()
    # so a resume must be given the URI again, and says so before anything starts
    proc = run_cli("run", "--resume", "s", "--storage", tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 2 and "give --tracking-uri" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["s", "sweep.json"]
