"""`update: reference`: the authors' scaled AdamW and scaled GD, checked against a plain rewrite.

The source: pilancilab/Riemannian_Preconditioned_LoRA, Mistral-7B/mistral/custom_optimizer.py at
commit 00d850f7f666468afbafbf34cdbeb670374073f7, classes `AdamWr` and `SGDr` (LoRA-One's copy of
`AdamWr`, YuanheZ/LoRA-One prec_logTrainer.py at e4d9c276d5a8a6587acbf869b3053bbad6ec3d9d, steps
the same). As the Hugging Face Trainer runs them: betas (0.9, 0.999), eps 1e-8, correct_bias
False. `authors_step` below restates them per layer, with loops, float64 and explicit inverses:

- AdamWr, for each (A, B) pair, A first: g̃_A = (BᵀB + reg I)⁻¹ g_A; m ← β₁m + (1-β₁)g̃_A,
  v ← β₂v + (1-β₂)g̃_A²; A ← A − lr·m/(√v + eps); if wd > 0, A ← A − lr·wd·A. Then B with
  g̃_B = g_B (AAᵀ + reg I)⁻¹, where A is the one just updated (the source keeps `c1 = p1.data`,
  a view, across A's in-place update), and the same moment, step and decay lines.
- SGDr: g̃_A and g̃_B from the pre-step A and B; if wd > 0, both decay (p ← p − lr·wd·p); then
  p ← p − lr·g̃.
"""

import copy
import math

import peft
import pytest
import torch
from torch import nn

import methods
from methods import lora_one
from methods._base import lora_layers, set_factors
from methods.riemannian import ScaledOptimizer

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def authors_step(pairs, grads, moments, *, kind, lr, wd, reg):
    """One step of AdamWr ("adamw") or SGDr ("sgd"). pairs: [[A, B], ...] float64, replaced in
    place; grads: [(g_A, g_B), ...]; moments: {(layer, factor): [m, v]}, filled on first use."""
    for i, (gA, gB) in enumerate(grads):
        A, B = pairs[i]
        eye = torch.eye(A.shape[0], dtype=torch.float64)
        if kind == "sgd":
            sA = torch.linalg.inv(B.T @ B + reg * eye) @ gA
            sB = gB @ torch.linalg.inv(A @ A.T + reg * eye)
            if wd > 0:
                A, B = A - lr * wd * A, B - lr * wd * B
            pairs[i] = [A - lr * sA, B - lr * sB]
            continue
        sA = torch.linalg.inv(B.T @ B + reg * eye) @ gA
        A = adam(A, sA, moments.setdefault((i, "A"), [0.0, 0.0]), lr, wd)
        sB = gB @ torch.linalg.inv(A @ A.T + reg * eye)    # the updated A
        B = adam(B, sB, moments.setdefault((i, "B"), [0.0, 0.0]), lr, wd)
        pairs[i] = [A, B]


def adam(p, g, mv, lr, wd):
    mv[0] = BETA1 * mv[0] + (1 - BETA1) * g
    mv[1] = BETA2 * mv[1] + (1 - BETA2) * g * g
    p = p - lr * mv[0] / (mv[1].sqrt() + EPS)     # no bias correction
    return p - lr * wd * p if wd > 0 else p


class Net(nn.Module):
    """Two layers of one shape and one of another: the optimizer batches same-shaped layers."""
    def __init__(self):
        super().__init__()
        self.a1, self.a2, self.c = nn.Linear(20, 12), nn.Linear(20, 12), nn.Linear(12, 7)

    def forward(self, x):
        return self.c(torch.tanh(self.a1(x) + self.a2(x)))


def net(init: str, dtype=torch.float64, seed=0):
    """A PEFT model (rank 4) with LoRA's init (B = 0) or LoRA-One's (from a random gradient)."""
    torch.manual_seed(seed)
    model = peft.get_peft_model(Net(), peft.LoraConfig(r=4, target_modules=["a1", "a2", "c"]))
    if init == "lora-one":
        for _, layer in lora_layers(model):
            weight = layer.get_base_layer().weight
            A, B, _ = lora_one.init_factors(weight.data, torch.randn_like(weight), rank=4, scaling=2.0)
            set_factors(layer, A, B)
    return model.to(dtype)


def pairs_of(model):
    return [[layer.lora_A["default"].weight, layer.lora_B["default"].weight] for _, layer in lora_layers(model)]


def backward(model, step, clip=None):
    """Gradients of a regression loss on a fresh batch (a different one every step)."""
    gen = torch.Generator().manual_seed(100 + step)
    dtype = next(model.parameters()).dtype
    x = torch.randn(16, 20, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(16, 7, generator=gen, dtype=torch.float64).to(dtype)
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    if clip:   # as a training loop does before optimizer.step()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    return [(A.grad.double().clone(), B.grad.double().clone()) for A, B in pairs_of(model)]


def rel_err(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


def run_against_authors(method, init, kind, *, lr, wd, reg, steps=10, clip=None, update="reference"):
    """Steps the method's optimizer and `authors_step` side by side from the same point; returns
    the largest relative gap of any factor after each step, and the model."""
    model = net(init)
    hp = methods.get(method).resolve({"optimizer": kind, "reg": reg, "update": update})
    opt = methods.get(method).optimizer(model, lr, hp, wd)
    ref = [[A.detach().clone(), B.detach().clone()] for A, B in pairs_of(model)]
    moments, gaps = {}, []
    for step in range(steps):
        grads = backward(model, step, clip)
        opt.step()
        authors_step(ref, grads, moments, kind=kind, lr=lr, wd=wd, reg=reg)
        gaps.append(max(rel_err(p, r) for pair, ref_pair in zip(pairs_of(model), ref)
                        for p, r in zip(pair, ref_pair)))
    return gaps, model


CASES = [   # method, init, optimizer, lr, weight decay, reg, gradient clipping
    ("riemannian", "lora", "adamw", 1e-2, 0.0, 1e-6, None),
    ("riemannian", "lora", "adamw", 1e-2, 0.5, 1e-3, 0.5),
    ("lora-one", "lora-one", "adamw", 1e-2, 0.5, 1e-6, None),
    ("riemannian", "lora", "sgd", 5e-2, 0.0, 1e-2, None),
    ("lora-one", "lora-one", "sgd", 5e-2, 0.5, 1e-3, 0.5),
]


@pytest.mark.parametrize("method,init,kind,lr,wd,reg,clip", CASES)
def test_reference_matches_authors_update(method, init, kind, lr, wd, reg, clip):
    gaps, model = run_against_authors(method, init, kind, lr=lr, wd=wd, reg=reg, clip=clip)
    assert max(gaps) < 1e-10, gaps
    # both factors of every layer moved well away from init: the comparison saw real steps
    for pair, start in zip(pairs_of(model), pairs_of(net(init))):
        for p, p0 in zip(pair, start):
            assert (p - p0).norm() > 1e-2 * max(p0.norm(), 1.0), (p - p0).norm()


def test_adamw_forms_differ_and_sgd_forms_agree():
    """The comparison above can fail: PEFT's form of scaled AdamW is far from the authors' after
    10 steps, while its scaled GD is the same update (decay-then-step is SGD's coupled decay)."""
    gaps, _ = run_against_authors("riemannian", "lora-one", "adamw", lr=1e-2, wd=0.5, reg=1e-6,
                                  update="peft")
    assert gaps[-1] > 1e-2
    gaps, _ = run_against_authors("lora-one", "lora-one", "sgd", lr=5e-2, wd=0.5, reg=1e-3, update="peft")
    assert max(gaps) < 1e-12


def first_step_ratio(t, g):
    """|reference step| / |PEFT step| of Adam after t steps with the same gradient g each time:
    (1-β₁ᵗ)/(√(1-β₂ᵗ)|g| + eps) against torch's bias-corrected 1/(|g| + eps)."""
    return (1 - BETA1 ** t) * (g.abs() + EPS) / (math.sqrt(1 - BETA2 ** t) * g.abs() + EPS)


def test_reference_first_step_from_lora_init():
    """From B = 0 the A-gradient is 0 and A stays put in both forms; B's first step is
    (1-β₁)/√(1-β₂) = 3.16 times PEFT's, element by element (eps aside)."""
    steps = {}
    for update in ("peft", "reference"):
        model = net("lora")
        before = [[A.detach().clone(), B.detach().clone()] for A, B in pairs_of(model)]
        hp = methods.get("riemannian").resolve({"update": update})
        opt = methods.get("riemannian").optimizer(model, 1e-3, hp, 0.0)
        grads = backward(model, 0)
        opt.step()
        steps[update] = [[p.detach() - p0 for p, p0 in zip(pair, pair0)]
                         for pair, pair0 in zip(pairs_of(model), before)]
    for (dA_p, dB_p), (dA_r, dB_r), (A, B), (_, gB) in zip(steps["peft"], steps["reference"],
                                                           pairs_of(net("lora")), grads):
        assert dA_p.abs().max() == dA_r.abs().max() == 0
        eye = torch.eye(4, dtype=torch.float64)
        g = gB @ torch.linalg.inv(A.detach() @ A.detach().T + 1e-6 * eye)
        torch.testing.assert_close(dB_r / dB_p, first_step_ratio(1, g), rtol=1e-9, atol=0)
        big = g.abs() > 1e-4      # eps is negligible there
        torch.testing.assert_close(dB_r[big] / dB_p[big],
                                   torch.full_like(dB_r[big], 0.1 / math.sqrt(0.001)), rtol=1e-3, atol=0)


def test_reference_early_steps_are_3_to_6_times_peft():
    """A fixed gradient on A and none on B (B stays put, so g̃_A is the same every step): step t of
    the reference is (1-β₁ᵗ)/√(1-β₂ᵗ) times PEFT's: 3.16 at t = 1, 5.8 at t = 5, 6.5 at t = 10."""
    models = {u: net("lora-one") for u in ("peft", "reference")}
    opts = {u: methods.get("lora-one").optimizer(m, 1e-3, methods.get("lora-one").resolve({"update": u}), 0.0)
            for u, m in models.items()}
    gA = torch.randn(4, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (A0, B0), = [pair for pair in pairs_of(models["peft"]) if pair[0].shape == (4, 20)][:1]
    g = torch.linalg.inv(B0.detach().T @ B0.detach() + 1e-6 * torch.eye(4, dtype=torch.float64)) @ gA
    ratios = []
    for t in range(1, 11):
        delta = {}
        for u, model in models.items():
            for A, B in pairs_of(model):
                A.grad, B.grad = torch.zeros_like(A), torch.zeros_like(B)
            A, B = pairs_of(model)[0]
            A.grad, before = gA.clone(), A.detach().clone()
            opts[u].step()
            delta[u] = A.detach() - before
        torch.testing.assert_close(delta["reference"] / delta["peft"], first_step_ratio(t, g), rtol=1e-8, atol=0)
        ratios.append((1 - BETA1 ** t) / math.sqrt(1 - BETA2 ** t))
    assert ratios[0] == pytest.approx(3.162, abs=1e-3) and ratios[4] == pytest.approx(5.80, abs=1e-2)
    assert max(ratios) == pytest.approx(6.53, abs=1e-2)


def test_bf16_parameters_fp32_moments():
    model = net("lora-one", dtype=torch.bfloat16)
    ref = [[A.detach().double(), B.detach().double()] for A, B in pairs_of(model)]
    opt = methods.get("lora-one").optimizer(model, 1e-2, methods.get("lora-one").resolve({}), 0.1)
    moments = {}
    for step in range(3):
        grads = backward(model, step)
        opt.step()
        authors_step(ref, grads, moments, kind="adamw", lr=1e-2, wd=0.1, reg=1e-6)
    for pair, ref_pair in zip(pairs_of(model), ref):
        for p, r in zip(pair, ref_pair):
            assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32
            assert rel_err(p, r) < 2e-2      # bf16 rounding of the parameters, three times


def test_lr_schedule_and_state_dict():
    """The group's lr (as a scheduler sets it) drives the step; a reloaded state continues alike."""
    model, twin = net("lora-one"), net("lora-one")
    hp = methods.get("lora-one").resolve({})
    opt = methods.get("lora-one").optimizer(model, 1e-2, hp, 0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    ref = [[A.detach().clone(), B.detach().clone()] for A, B in pairs_of(model)]
    moments = {}
    for step in range(3):
        grads = backward(model, step)
        opt.step()
        authors_step(ref, grads, moments, kind="adamw", lr=1e-2 * 0.5 ** step, wd=0.1, reg=1e-6)
        schedule.step()
    assert max(rel_err(p, r) for pair, rp in zip(pairs_of(model), ref) for p, r in zip(pair, rp)) < 1e-10
    with torch.no_grad():
        for pair, twin_pair in zip(pairs_of(model), pairs_of(twin)):
            for p, q in zip(pair, twin_pair):
                q.copy_(p)
    twin_opt = methods.get("lora-one").optimizer(twin, 1.0, hp, 0.1)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))   # as saved to disk: no shared moments
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 1e-2 * 0.5 ** 3
    for m in (model, twin):
        backward(m, 7)
    opt.step()
    twin_opt.step()
    for pair, twin_pair in zip(pairs_of(model), pairs_of(twin)):
        for p, q in zip(pair, twin_pair):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_refuses_closure_and_unpaired_parameters():
    model = net("lora")
    opt = methods.get("riemannian").optimizer(model, 1e-2, methods.get("riemannian").resolve({}), 0.0)
    assert isinstance(opt, ScaledOptimizer)
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)
    model.base_model.model.c.base_layer.bias.requires_grad_(True)
    with pytest.raises(ValueError, match="LoRA"):
        methods.get("riemannian").optimizer(model, 1e-2, methods.get("riemannian").resolve({}), 0.0)
