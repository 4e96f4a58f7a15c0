"""Bad input: one line naming the bad value and the fix, exit code 2, nothing started or left."""

import shutil
from pathlib import Path

import pytest

from harness.spaces import FOLDER
from helpers import run_cli



def rank_spaces(tmp, method, rank):
    folder = tmp / "ranked"
    shutil.copytree(FOLDER, folder)
    (folder / f"{method}.yaml").write_text(f"method: {method}\ngrid:\n  rank: [{rank}]\n")
    return folder


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


def spaces_without_ladders(tmp):
    folder = tmp / "noladders"
    shutil.copytree(FOLDER, folder)
    (folder / "_ladders.yaml").unlink()
    return folder


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def bomb_suite(tmp):
    path = tmp / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    return path


def suite_without_methods(tmp):
    path = tmp / "suite.yaml"
    path.write_text("suite: s\ntask: gsm8k\npreset: smoke\n")
    return path


RUN = ["run", "--preset", "smoke"]
CASES = {
    "unknown method": (RUN + ["--methods", "lora,vera"], "vera"),
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
    "unknown kernels": (RUN + ["--kernels", "triton"], "triton"),
    "two warm-ups": (RUN + ["--warmup-steps", "5", "--warmup-ratio", "0.1"], "warmup_ratio 0.1"),
    "negative clipping norm": (RUN + ["--max-grad-norm", "-1"], "-1"),
    "missing data folder": (RUN + ["--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    "corrupt data row": (RUN + ["--data-dir", "{corrupt}"], "line 3"),
    "missing model path": (RUN + ["--model", "/no/such/model"], "/no/such/model"),
    "unreachable tracking server": (RUN + ["--tracking-uri", "http://127.0.0.1:9"], "127.0.0.1:9"),
    "unreachable Ray address": (RUN + ["--address", "127.0.0.1:9"], "127.0.0.1:9"),
    "GPUs where none exist": (RUN + ["--gpus-per-trial", "1"], "gpus-per-trial"),
    "more CPUs per trial than the machine has": (RUN + ["--cpus-per-trial", "4096"], "--cpus-per-trial 4096 but this machine has"),
    "negative --scale-wait": (RUN + ["--scale-wait", "-1"], "--scale-wait"),
    "resume of an unknown sweep": (RUN + ["--resume", "nope"], "nope"),
    "nightly config missing a field": (["nightly", "--config", "{suite}"], "methods"),
    "secret in a tracking URI": (RUN + ["--tracking-uri", "http://user:hunter2@127.0.0.1:9"], "user:***@"),
    "sweep name with ..": (RUN + ["--name", "../escape"], "../escape"),
    "sweep name with a slash": (RUN + ["--name", "a/b"], "a/b"),
    "sweep name with a quote": (RUN + ["--name", "x' or '1'='1"], "--name"),
    "sweep name with a backtick": (RUN + ["--name", "x`y"], "x`y"),
    "resume name with ..": (RUN + ["--resume", "../x"], "../x"),
    "rank above the model's layers": (["trial", "--method", "pissa", "--lr", "1e-4", "--preset", "smoke",
                                       "--set", "rank=40"], "rank 40"),
    "LoRA-GA rank above half a layer": (RUN + ["--methods", "lora-ga", "--lrs", "1e-3", "--spaces", "{rank20}"],
                                        "rank 20"),
    "dropout of 1": (["trial", "--method", "lora", "--lr", "1e-4", "--preset", "smoke", "--set", "dropout=1"],
                     "dropout"),
    "gamma of 0": (["trial", "--method", "lora-ga", "--lr", "1e-4", "--preset", "smoke", "--set", "gamma=0"],
                   "gamma"),
    "negative seed": (RUN + ["--seed", "-1"], "-1"),
    "search spaces without _ladders.yaml": (RUN + ["--spaces", "{noladders}"], "_ladders.yaml"),
    "garbage tracking URI": (RUN + ["--tracking-uri", "not a uri"], "not a uri"),
    "storage under a file": (RUN + ["--storage", "/etc/hostname/runs"], "/etc/hostname/runs"),
    "storage on a read-only file system": (RUN + ["--storage", "/proc/runs"], "/proc/runs"),
    "HOME not a folder": (RUN + ["--env", "HOME=/dev/null/home"], "HOME"),
    "more trials than --max-trials": (RUN + ["--seeds", "400"], "--max-trials"),
    "zero --max-trials": (RUN + ["--max-trials", "0"], "--max-trials"),
    "report of an unknown sweep": (["report", "nope"], "nope"),
    "report name with ..": (["report", "../x"], "../x"),
    "report tolerance of 1": (["report", "s", "--loss-tol", "1"], "--loss-tol"),
    "run tolerance of 1.5": (RUN + ["--loss-tol", "1.5"], "1.5"),
    "report negative reference lr": (["report", "s", "--reference-lr", "-1"], "-1"),
    "report garbage tracking URI": (["report", "s", "--tracking-uri", "nope://x"], "nope://x"),
    "ui port out of range": (["ui", "--port", "70000"], "70000"),
    "ui host with a slash": (["ui", "--host", "a/b"], "a/b"),
    "--set value with an alias": (["trial", "--method", "lora", "--lr", "1e-4", "--set", "rank=*a"], "rank=*a"),
    "alias bomb in a nightly suite": (["nightly", "--config", "{bomb}"], "alias"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, data_dir):
    args, needle = CASES[case]
    values = {"spaces": broken_spaces(tmp_path), "tagged": python_tag_spaces(tmp_path),
              "corrupt": corrupt_data(tmp_path, data_dir), "noladders": spaces_without_ladders(tmp_path),
              "rank20": rank_spaces(tmp_path, "lora-ga", 20),
              "suite": suite_without_methods(tmp_path), "bomb": bomb_suite(tmp_path)}
    args = [a.format(**values) for a in args]
    env = dict(a.split("=", 1) for a in args[args.index("--env") + 1:][:1]) if "--env" in args else {}
    args = [a for a in args if a != "--env" and a.split("=", 1)[0] not in env]
    if args[0] == "run" and "--data-dir" not in args:
        args += ["--data-dir", data_dir]
    if args[0] in ("run", "report", "ui") and "--storage" not in args:
        args += ["--storage", str(tmp_path / "store")]
    work = tmp_path / "cwd"
    work.mkdir()
    ray_tmp = tmp_path / "raytmp"   # Ray's sessions of this call only (other sweeps may run beside it)
    proc = run_cli(*args, cwd=work, timeout=120, env={**(env or {}), "RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    assert not any(work.iterdir()) and not (tmp_path / "store").exists()  # and no `hacked` file
    assert not ray_tmp.exists()   # no Ray session started


def test_alias_bomb_fails_fast_in_one_short_line(tmp_path):
    """325 bytes of nested aliases expand to 9**9 items: refused at the first alias."""
    spaces = tmp_path / "bomb"
    shutil.copytree(FOLDER, spaces)
    (spaces / "lora.yaml").write_text(ALIAS_BOMB)
    proc = run_cli("run", "--preset", "smoke", "--spaces", spaces, "--dry-run", "--storage", tmp_path / "s",
                   cwd=tmp_path, timeout=60)
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in line and len(line) <= 300 and "alias" in line, proc.stderr


def test_long_values_are_cut_in_errors(tmp_path):
    proc = run_cli("run", "--preset", "smoke", "--name", "x" * 5000 + "/", "--storage", tmp_path / "s",
                   "--dry-run", cwd=tmp_path, timeout=60)
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "xxxx" in line and len(line) <= 400, line[:500]


def test_trial_out_is_not_replaced_without_overwrite(tmp_path, data_dir):
    out = tmp_path / "trial"
    out.mkdir()
    (out / "metrics.json").write_text('{"val_loss": 1.0}')
    args = ["trial", "--method", "lora", "--lr", "1e-2", "--preset", "smoke", "--steps", "2",
            "--eval-interval", "2", "--eval-limit", "0", "--data-dir", data_dir, "--out", out]
    proc = run_cli(*args, timeout=300)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and str(out) in proc.stderr
    assert (out / "metrics.json").read_text() == '{"val_loss": 1.0}'
    proc = run_cli(*args, "--overwrite", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metrics.json").read_text() != '{"val_loss": 1.0}'


def test_dry_run_of_a_big_grid_states_the_count_and_summarizes(tmp_path, data_dir):
    proc = run_cli("run", "--preset", "smoke", "--seeds", "400", "--max-trials", "10000", "--dry-run",
                   "--data-dir", data_dir, "--storage", tmp_path / "s", cwd=tmp_path, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0] == "6000 trials", proc.stdout[:500]
    assert "1200 trials: 3 lr rungs x 400 seeds x 1 hyperparameter combinations" in proc.stdout
    assert len(lines) < 40 and not (tmp_path / "s").exists()


def test_report_of_an_unknown_sweep_creates_no_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    proc = run_cli("report", "nope", "--storage", store, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any(store.iterdir())


def test_sweep_whose_trials_all_failed_exits_1_with_the_errors(tmp_path, data_dir):
    proc = run_cli("run", "--methods", "lora", "--lrs", "1e-2,2e-2", "--max-failures", "0", "--eval-limit", "0",
                   "--preset", "smoke", "--steps", "2", "--eval-interval", "2", "--cpus-per-trial", "1",
                   "--data-dir", data_dir, "--storage", tmp_path, "--name", "allfail",
                   env={"HARNESS_FAULT": "error@1"}, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "all 2 trials failed: 2 x" in proc.stderr and "injected error" in proc.stderr
