"""Command line: `harness methods`, `harness trial`."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness.config import PRESETS, TrialConfig, UsageError, resolve


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def quiet_libraries():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import transformers
    transformers.utils.logging.disable_progress_bar()


def parse_number(text: str):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def parse_setting(text: str) -> tuple:
    import yaml
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (for example rank=16)")
    return key.strip(), yaml.safe_load(value)


def add_trial_options(p):
    """Options shared by every command that trains."""
    p.add_argument("--task", default="gsm8k", help="evaluation task (default: gsm8k)")
    p.add_argument("--preset", default="smoke",
                   help=f"size of model and budget: {', '.join(PRESETS)} (default: smoke)")
    p.add_argument("--data-dir", default="", help="local data folder with <task>/train.jsonl and "
                   "test.jsonl (default: $HARNESS_DATA_DIR, else the hub)")
    p.add_argument("--model", default="", help="hub id, local folder, tiny or smollm2-135m "
                   "(default: the preset's)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=0, help="examples per step (default: the preset's)")
    p.add_argument("--max-length", type=int, default=0, help="tokens per example (default: the preset's)")
    p.add_argument("--eval-interval", type=int, default=0, help="steps between validations")
    p.add_argument("--train-size", type=int, default=0, help="training rows to use (0 = all)")
    p.add_argument("--val-size", type=int, default=0, help="held-out validation rows")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub (off: only use with models you trust)")


def config_from(args, **extra) -> TrialConfig:
    return TrialConfig(task=args.task, preset=args.preset, data_dir=args.data_dir, model=args.model,
                       steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                       eval_interval=args.eval_interval, train_size=args.train_size,
                       val_size=args.val_size, device=args.device, dtype=args.dtype,
                       trust_remote_code=args.trust_remote_code, **extra)


def cmd_methods(args):
    import methods
    for name in methods.names():
        method = methods.get(name)
        print(f"{name:<11} {method.description}")
        print(f"{'':<11} defaults: " + ", ".join(f"{k}={v}" for k, v in method.resolve({}).items()))


def cmd_trial(args):
    cfg = config_from(args, method=args.method, lr=args.lr, seed=args.seed,
                      hparams=dict(args.set), out=args.out)
    cfg = resolve(cfg)
    if not cfg.out:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.out = str(Path("runs", "trials", f"{cfg.method}-lr{cfg.lr:g}-seed{cfg.seed}-{stamp}").resolve())
    from harness.train import run_trial
    result = run_trial(cfg, progress=True)
    print(json.dumps({k: v for k, v in result.items()}, indent=2))
    print(f"metrics: {Path(cfg.out, 'metrics.json')}")
    return 0 if result["status"] == "finished" else 1


def build_parser() -> Parser:
    parser = Parser(prog="harness", description="Learning-rate robustness benchmarks of LoRA methods.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("methods", help="list the methods, their descriptions and default hyperparameters")
    trial = sub.add_parser("trial", help="fine-tune one method at one learning rate")
    trial.add_argument("--method", required=True, help="method name (see `harness methods`)")
    trial.add_argument("--lr", type=parse_number, required=True, help="learning rate, for example 2e-4")
    trial.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    trial.add_argument("--set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                       help="method hyperparameter, repeatable: --set rank=16 --set reg=1e-4")
    trial.add_argument("--out", default="", help="trial folder (default: runs/trials/<method>-lr<lr>-...)")
    add_trial_options(trial)
    return parser


COMMANDS = {"methods": cmd_methods, "trial": cmd_trial}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        quiet_libraries()
        return COMMANDS[args.command](args) or 0
    except UsageError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
