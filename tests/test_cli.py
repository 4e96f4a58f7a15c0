"""Bad input: one line naming the bad value and the fix, exit code 2, nothing started or left."""

import shutil
from pathlib import Path

import pytest

from harness.spaces import FOLDER
from helpers import run_cli

RAY_SESSIONS = Path("/tmp/ray")


def broken_spaces(tmp):
    folder = tmp / "spaces"
    shutil.copytree(FOLDER, folder)
    (folder / "riemannian.yaml").write_text("method: riemannian\ngrid:\n  reg: [-1]\n")
    return folder


def python_tag_spaces(tmp):
    """A search space whose YAML would run a command if it were loaded unsafely."""
    folder = tmp / "tagged"
    shutil.copytree(FOLDER, folder)
    (folder / "riemannian.yaml").write_text('method: riemannian\ngrid: !!python/object/apply:os.system ["touch hacked"]\n')
    return folder


def corrupt_data(tmp, data_dir):
    folder = tmp / "data" / "gsm8k"
    folder.mkdir(parents=True)
    lines = (Path(data_dir) / "gsm8k" / "train.jsonl").read_text().splitlines()[:5]
    lines[2] = lines[2][:40]  # a truncated row
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder.parent


def suite_without_methods(tmp):
    path = tmp / "suite.yaml"
    path.write_text("suite: s\ntask: gsm8k\npreset: smoke\n")
    return path


RUN = ["run", "--preset", "smoke"]
CASES = {
    "unknown method": (RUN + ["--methods", "lora,dora"], "dora"),
    "unknown task": (RUN + ["--task", "gsm9k"], "gsm9k"),
    "unknown preset": (["run", "--preset", "huge"], "huge"),
    "invalid search space": (RUN + ["--spaces", "{spaces}"], "riemannian.yaml"),
    "python tag in a search space": (RUN + ["--spaces", "{tagged}"], "python/object/apply:os.system"),
    "negative lr": (["trial", "--method", "lora", "--lr", "-1", "--preset", "smoke"], "-1"),
    "lr not a number": (["trial", "--method", "lora", "--lr", "abc", "--preset", "smoke"], "abc"),
    "zero lr in ladder": (RUN + ["--lrs", "1e-4,0"], "0"),
    "rank zero": (["trial", "--method", "lora", "--lr", "1e-4", "--preset", "smoke", "--set", "rank=0"], "rank"),
    "negative eval limit": (RUN + ["--eval-limit", "-3"], "-3"),
    "unknown schedule": (RUN + ["--schedule", "cosine-ish"], "cosine-ish"),
    "two warm-ups": (RUN + ["--warmup-steps", "5", "--warmup-ratio", "0.1"], "warmup_ratio 0.1"),
    "negative clipping norm": (RUN + ["--max-grad-norm", "-1"], "-1"),
    "missing data folder": (RUN + ["--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    "corrupt data row": (RUN + ["--data-dir", "{corrupt}"], "line 3"),
    "missing model path": (RUN + ["--model", "/no/such/model"], "/no/such/model"),
    "unreachable tracking server": (RUN + ["--tracking-uri", "http://127.0.0.1:9"], "127.0.0.1:9"),
    "unreachable Ray address": (RUN + ["--address", "127.0.0.1:9"], "127.0.0.1:9"),
    "GPUs where none exist": (RUN + ["--gpus-per-trial", "1"], "gpus-per-trial"),
    "resume of an unknown sweep": (RUN + ["--resume", "nope"], "nope"),
    "nightly config missing a field": (["nightly", "--config", "{suite}"], "methods"),
    "secret in a tracking URI": (RUN + ["--tracking-uri", "http://user:hunter2@127.0.0.1:9"], "user:***@"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, data_dir):
    args, needle = CASES[case]
    values = {"spaces": broken_spaces(tmp_path), "tagged": python_tag_spaces(tmp_path),
              "corrupt": corrupt_data(tmp_path, data_dir),
              "suite": suite_without_methods(tmp_path)}
    args = [a.format(**values) for a in args]
    if args[0] == "run" and "--data-dir" not in args:
        args += ["--data-dir", data_dir]
    if args[0] == "run":
        args += ["--storage", str(tmp_path / "store")]
    work = tmp_path / "cwd"
    work.mkdir()
    sessions = set(RAY_SESSIONS.glob("session_2*")) if RAY_SESSIONS.exists() else set()
    proc = run_cli(*args, cwd=work, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    assert not any(work.iterdir()) and not (tmp_path / "store").exists()  # and no `hacked` file
    assert (set(RAY_SESSIONS.glob("session_2*")) if RAY_SESSIONS.exists() else set()) == sessions
