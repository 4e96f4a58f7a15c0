"""Toy tasks: the LoRA-One paper's linear-model experiments, in seconds on a CPU.

y = x Wᵀ with x ∈ ℝ^100, a pretrained W₀ (100×100, entries N(0, 1)) and the fine-tuning target
W₀ + Θ, Θ of rank K = 4; N = 1600 inputs with entries N(0, 1), no noise. In PEFT's out×in naming
the model is one bias-free nn.Linear with weight W₀, and every method runs through its own module:
`lora_config`, `init_adapters` with the full-batch gradient G = ∂L/∂W at W₀, then `optimizer`.
- toy-linear (alignment): Θ's singular values all 1, rank 8, A₀ ~ N(0, init_scale²), B₀ = 0,
  step 1/64, 1500 iterations.
- toy-linear-illcond: singular values (4, 3, 2, 1)/4 (κ = 4), rank 4 = K, step 1/2, 100 iterations.
Both declare the paper's toy settings: γ = 1, s = 1 (alpha = rank, no rsLoRA), δ = reg = 1e-3 and
full-batch gradient descent (optimizer sgd); a user's --set still wins.

Measured at every eval interval:
- risk ‖W_eff − (W₀ + Θ)‖²_F / 2, W_eff the effective weight (base + s·BA); reported as val_loss.
- alignment ‖V_K(G)ᵀ V_K(A)‖²_F / K, V_K(M) the top-K right singular vectors of M: the mean cos²
  of the principal angles between the input-side subspace of the adapter A (r×n; the paper's
  d×r factor) and G's top-K input-side subspace. 1 = aligned, about K/n for a random A.
- angle: the paper's measure of the same, ‖U_{K,⊥}(G)ᵀ U_K(A)‖_op in its d×r naming, the sine of
  the largest of those principal angles. 0 = aligned."""

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model

import methods
from harness.config import UsageError, positive
from methods._base import LORA_DEFAULTS, Method, lora_layers

D, N, K = 100, 1600, 4
PROBLEM_SEED = 1234  # fixed: every trial of a sweep fits the same problem; the trial seed is the init's
SHARED = dict(gamma=1.0, reg=1e-3, optimizer="sgd", use_rslora=False)


@dataclass(frozen=True)
class Toy:
    """A toy task: the attributes of harness.tasks.LLMTask, for the linear model."""
    singular_values: tuple
    rank: int
    lr: float           # the paper's step size: the trial default
    steps: int
    eval_interval: int
    ladder_lrs: tuple   # the sweep's default learning rates
    init_scale: float   # std of LoRA's Gaussian A₀; 0 keeps PEFT's kaiming-uniform init
    reuse_workers = True  # a trial takes about a second, a fresh worker process many more
    presets = {}          # none of its own: the task's defaults replace the presets' LLM sizes

    @property
    def defaults(self) -> dict:
        """TrialConfig fields the task sets in place of the preset's LLM sizes."""
        # The paper's full-batch GD: a constant step, no warm-up, no clipping.
        return dict(model=f"linear-{D}x{D}", lr=self.lr, steps=self.steps, eval_interval=self.eval_interval,
                    eval_limit=0, schedule="constant", warmup_steps=0, max_grad_norm=0.0)

    def hparams(self, method: str, overrides: dict) -> dict:
        """The method's hyperparameters under the task's defaults (only keys the method has), with
        alpha = rank unless given (s = 1), and init_scale for methods with LoRA's init."""
        found, overrides = methods.get(method), dict(overrides)
        scale = overrides.pop("init_scale", None)
        known = {**LORA_DEFAULTS, **found.defaults}
        defaults = {k: v for k, v in {**SHARED, "rank": self.rank}.items() if k in known}
        hp = found.resolve({**defaults, **overrides})
        if "alpha" not in overrides:
            hp["alpha"] = float(hp["rank"])
        if not keeps_lora_init(found):
            if scale is not None:
                raise UsageError(f"init_scale sets LoRA's Gaussian A₀: method {method} has its own init")
            return hp
        return {**hp, "init_scale": positive("init_scale", self.init_scale if scale is None else scale,
                                             allow_zero=True)}

    def validate(self, cfg):
        if cfg.eval_limit:
            raise UsageError(f"task {cfg.task} has no GSM8K questions to score: drop --eval-limit")
        method = methods.get(cfg.method)
        if method.data_samples and type(method).data_pass is not Method.data_pass:
            raise UsageError(f"method {cfg.method} reads training batches before training, and task {cfg.task} "
                             f"has only its full-batch gradient: run it on an LLM task such as gsm8k")
        if method.lora_config(cfg.hparams, ["linear"]).use_dora:
            raise UsageError(f"task {cfg.task} measures the weight W + s·BA, which is not {cfg.method}'s: "
                             f"run it on an LLM task such as gsm8k")

    def ladder(self, preset: str, folder: Path) -> list[float]:
        return list(self.ladder_lrs)

    def spaces(self, names: list[str], folder: Path) -> dict:
        """The lr only: the other hyperparameters are the paper's."""
        return {name: {} for name in names}

    def preflight(self, trial):
        """Nothing to check: the data is generated."""

    def resources(self, cpus: float, gpus: float, remote: bool) -> tuple[float, float]:
        return cpus or 1, 0  # one core is plenty for a 100x100 model

    def compute(self, trial, count: int) -> str:
        return (f"compute: {count} trials x {trial.steps} full-batch steps of a {trial.model} linear "
                f"model (seconds each on a CPU); no lm-eval scoring")

    def describe(self, trial) -> str:
        return (f"task {trial.task}: y = x Wᵀ, W₀ {D}x{D} N(0, 1), target W₀ + Θ with Θ of rank {K} and "
                f"singular values {self.singular_values}, {N} Gaussian inputs; risk = val_loss")

    def run(self, cfg, report=None) -> dict:
        return run_trial(cfg, report)

    def score(self, cfg) -> dict:
        """The risk is the score: nothing to generate."""
        return {}

    def report_sections(self, analysis, rows, folder) -> list:
        from reports import toy
        return [toy.section(analysis, rows, folder)]


TASKS = {
    "toy-linear": Toy((1.0, 1.0, 1.0, 1.0), rank=8, lr=1 / 64, steps=1500, eval_interval=50,
                      ladder_lrs=tuple(2.0 ** -e for e in range(10, 3, -1)), init_scale=1e-3),
    "toy-linear-illcond": Toy((1.0, 0.75, 0.5, 0.25), rank=4, lr=0.5, steps=100, eval_interval=5,
                              ladder_lrs=tuple(2.0 ** -e for e in range(6, -1, -1)), init_scale=0.0),
}


def keeps_lora_init(method: Method) -> bool:
    """Whether the adapters start as PEFT's LoRA (B = 0): the only init that init_scale changes."""
    return (type(method).lora_config is Method.lora_config
            and type(method).init_adapters is Method.init_adapters)


def problem(task: str):
    """(R, Y, W₀, Θ) in float64, weights in out×in convention. R (D×D) has RᵀR = XᵀX, so the loss
    on (R, Y = R (W₀ + Θ)ᵀ) is the loss on the N inputs X, at a sixteenth of the cost. W₀ is
    rounded to float32, the dtype the adapters are initialized in, so both dtypes hold the same base."""
    g = torch.Generator().manual_seed(PROBLEM_SEED)
    normal = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    X = normal(N, D)
    W0 = normal(D, D).float().double()
    U, V = torch.linalg.qr(normal(D, K)).Q, torch.linalg.qr(normal(D, K)).Q
    theta = U @ torch.diag(torch.tensor(TASKS[task].singular_values, dtype=torch.float64)) @ V.T
    R = torch.linalg.qr(X).R
    return R, R @ (W0 + theta).T, W0, theta


def loss_of(model, R, Y) -> torch.Tensor:
    """‖X Wᵀ − X (W₀ + Θ)ᵀ‖²_F / 2N: the full-batch training loss."""
    return (model(R) - Y).square().sum() / (2 * N)


def top_right(M: torch.Tensor, k: int = K) -> torch.Tensor:
    return torch.linalg.svd(M, full_matrices=False).Vh[:k].T


def subspace_angles(top_G: torch.Tensor, A: torch.Tensor, k: int = K) -> tuple[float, float]:
    """(alignment, angle) of A's top-k input-side subspace against top_G's: the mean cos² of the
    principal angles, and the sine of the largest (the paper's ‖U_{k,⊥}(G)ᵀ U_k(A)‖_op)."""
    cosines = torch.linalg.svdvals(top_G.T @ top_right(A, k))
    return cosines.square().mean().item(), (1 - cosines.min().square()).clamp(min=0).sqrt().item()


def build(cfg, R, Y, W0):
    """(PEFT model in float64, its LoRA layer, G) with the method's init, as the LLM path does it."""
    method = methods.get(cfg.method)
    model = torch.nn.Sequential(OrderedDict(linear=torch.nn.Linear(D, D, bias=False)))
    with torch.no_grad():
        model.linear.weight.copy_(W0)
    G = torch.autograd.grad(loss_of(model, R.float(), Y.float()), model.linear.weight)[0]
    model.requires_grad_(False)
    config = method.lora_config(cfg.hparams, ["linear"])
    config.task_type = None  # a bare module, not a causal LM
    model = get_peft_model(model, config)
    method.init_adapters(model, cfg.hparams, {"linear": G} if method.data_samples else None)
    (_, layer), = lora_layers(model)
    if cfg.hparams.get("init_scale"):
        with torch.no_grad():
            layer.lora_A["default"].weight.normal_(0.0, cfg.hparams["init_scale"])
    # Init in float32 as the LLM path does (PEFT's PiSSA refuses float64); train in float64 so the
    # risk resolves far below float32's floor (about 1e-11 here).
    return model.double(), layer, G.double()


def run_trial(cfg, report=None) -> dict:
    """Full-batch training of one resolved toy config; reports like harness.train.run_trial (with
    val_loss = risk, plus alignment) and writes <out>/metrics.json."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    R, Y, W0, theta = problem(cfg.task)
    model, layer, G = build(cfg, R, Y, W0)
    target = W0 + theta
    optimizer = methods.get(cfg.method).optimizer(model, cfg.lr, cfg.hparams, cfg.weight_decay)
    top_G, ceiling = top_right(G), cfg.diverge_factor * theta.square().sum().item() / 2

    @torch.no_grad()
    def measure(step, loss):
        weight = layer.get_base_layer().weight + layer.get_delta_weight("default")
        risk = (weight - target).square().sum().item() / 2
        point = dict(step=step, train_loss=loss, lr_now=cfg.lr)
        if math.isfinite(risk) and risk <= ceiling:  # worse than no fine-tuning by diverge_factor
            align, angle = subspace_angles(top_G, layer.lora_A["default"].weight)
            point.update(val_loss=risk, alignment=align, angle=angle)
        if report:
            report(point)
        return point

    history, status = [], "finished"
    for step in range(cfg.steps + 1):
        loss = loss_of(model, R, Y)
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            history.append(measure(step, loss.item()))
            if "val_loss" not in history[-1]:
                status = "diverged"
                break
        if step < cfg.steps:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    risks = [p["val_loss"] for p in history if "val_loss" in p]
    last = history[-1]
    result = dict(status=status, step=last["step"], val_loss=risks[-1], val_loss_init=risks[0],
                  best_val_loss=min(risks), train_loss=last["train_loss"],
                  alignment=last.get("alignment"), angle=last.get("angle"), seconds=time.perf_counter() - start)
    Path(cfg.out, "metrics.json").write_text(json.dumps(
        {"config": cfg.to_dict(), **result, "history": history}, indent=2))
    return result
