"""The formulas of docs/methods-spec.md, checked on small random tensors.

Every reference value here is computed independently of the method code: exact SVDs from
torch.linalg.svd, inverses from torch.linalg.inv in float64, and plain torch optimizers."""

import math
import re
import sys

import peft
import pytest
import torch
from torch import nn

import methods
from harness.config import UsageError
from methods import lora_ga, lora_one
from methods._base import lora_layers
from methods.riemannian import Preconditioner, precondition


# ---------------------------------------------------------------- helpers

def spectral_matrix(m, n, *, seed=0, decay=0.6, dtype=torch.float32):
    """G = U diag(S) V^T with S = 10 * decay^k: distinct singular values with a clear gap, so
    the randomized SVD of the methods recovers the same subspaces as an exact SVD."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    S = 10 * decay ** torch.arange(k, dtype=torch.float64)
    return ((U * S) @ V.T).to(dtype)


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def projector(X):
    """Orthogonal projector (float64) onto the column span of X."""
    Q = torch.linalg.qr(X.double()).Q
    return Q @ Q.T


def exact_svd(G):
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U, S, Vh.T


def ref_precondition(A, B, gA, gB, reg):
    """(B^T B + reg I)^-1 g_A and g_B (A A^T + reg I)^-1, in float64 with explicit inverses."""
    A, B, gA, gB = (t.detach().double() for t in (A, B, gA, gB))
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    return torch.linalg.inv(B.T @ B + reg * eye) @ gA, gB @ torch.linalg.inv(A @ A.T + reg * eye)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(20, 12)

    def forward(self, x):
        return self.lin(x)


def tiny_peft(seed=0, dtype=torch.float64):
    """A PEFT model with one rank-4 adapter; init_lora_weights=False leaves both A and B nonzero
    (B = 0 would make g_A = 0 and hide half of the preconditioner). float64 so that the optimizer
    checks can use tight tolerances."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, target_modules=["lin"], init_lora_weights=False)
    return peft.get_peft_model(Tiny(), config).to(dtype)


def factors(model):
    """The lora_A and lora_B parameters of the single adapted layer."""
    (_, layer), = lora_layers(model)
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight


def backward_on_batch(model, seed):
    """Zero the grads, run a regression loss on a fresh random batch, backward."""
    x = randn(8, 20, seed=seed, dtype=torch.float64)
    y = randn(8, 12, seed=seed + 1000, dtype=torch.float64)
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()


def snapshot(model):
    """Pre-step (A, B, g_A, g_B), cloned: the optimizer overwrites .grad in place."""
    A, B = factors(model)
    assert A.grad is not None and A.grad.abs().max() > 0 and B.grad.abs().max() > 0
    return A.detach().clone(), B.detach().clone(), A.grad.clone(), B.grad.clone()


def sgd_step_delta(method_name, overrides, lr=0.1):
    """One optimizer step of the method: (pre-step A, B, g_A, g_B), the changes of A and B, hp."""
    method = methods.get(method_name)
    hp = method.resolve(overrides)
    model = tiny_peft()
    backward_on_batch(model, seed=1)
    A0, B0, gA, gB = snapshot(model)
    method.optimizer(model, lr, hp, weight_decay=0.0).step()
    A, B = factors(model)
    return (A0, B0, gA, gB), A.detach() - A0, B.detach() - B0, hp


def assert_rel_close(actual, expected, rtol):
    """Frobenius relative error, in float64."""
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).norm() / expected.norm()
    assert err < rtol, f"relative error {err:.3g} >= {rtol}"


# ---------------------------------------------------------------- lora-ga init (spec section 3)

M, N, R = 48, 40, 4


@pytest.fixture(scope="module")
def ga_init():
    W, G = randn(M, N, seed=1), spectral_matrix(M, N)
    torch.manual_seed(0)  # svd_lowrank draws a random test matrix
    A, B, new_W = lora_ga.init_factors(W, G, rank=R, scaling=0.7, gamma=64)
    return W, G, A, B, new_W


def test_lora_ga_shapes_and_dtypes(ga_init):
    W, _, A, B, new_W = ga_init
    assert A.shape == (R, N) and B.shape == (M, R) and new_W.shape == (M, N)
    assert A.dtype == B.dtype == torch.float32 and new_W.dtype == W.dtype


def test_lora_ga_factor_norms(ga_init):
    # c = m^(1/4) / sqrt(gamma): the singular values are not used, every row/column has norm c
    _, _, A, B, _ = ga_init
    c = M ** 0.25 / math.sqrt(64)
    torch.testing.assert_close(A.norm(dim=1), torch.full((R,), c), rtol=1e-5, atol=0)
    torch.testing.assert_close(B.norm(dim=0), torch.full((R,), c), rtol=1e-5, atol=0)
    # and they are orthogonal: A A^T = B^T B = c^2 I
    torch.testing.assert_close(A @ A.T, c ** 2 * torch.eye(R), rtol=0, atol=1e-5)
    torch.testing.assert_close(B.T @ B, c ** 2 * torch.eye(R), rtol=0, atol=1e-5)


def test_lora_ga_subspaces(ga_init):
    # A spans G's top-r right singular vectors; B spans left singular vectors r+1..2r (of +G)
    _, G, A, B, _ = ga_init
    U, _, V = exact_svd(G)
    assert (projector(A.T) - projector(V[:, :R])).norm() < 1e-4
    assert (projector(B) - projector(U[:, R:2 * R])).norm() < 1e-4
    # not the top-r left vectors (which is what an off-by-r slice would give)
    assert (projector(B) - projector(U[:, :R])).norm() > 1


def test_lora_ga_new_weight(ga_init):
    # W <- W - s B A, so that W' + s B A = W: the output at init is unchanged
    W, _, A, B, new_W = ga_init
    torch.testing.assert_close(new_W, W - 0.7 * B @ A, rtol=1e-5, atol=1e-6)
    assert (new_W - W).abs().max() > 1e-3


def test_lora_ga_bf16_weight():
    # the offset is computed in fp32 and only the result is cast back to W's dtype
    W, G = randn(M, N, seed=2).to(torch.bfloat16), spectral_matrix(M, N, seed=3)
    torch.manual_seed(0)
    A, B, new_W = lora_ga.init_factors(W, G, rank=R, scaling=2.0, gamma=16)
    assert new_W.dtype == torch.bfloat16 and A.dtype == B.dtype == torch.float32
    assert torch.equal(new_W, (W.float() - 2.0 * B @ A).to(torch.bfloat16))


def test_lora_ga_rank_too_large():
    # B uses singular vectors r+1..2r, which need 2r <= min(m, n)
    W, G = randn(M, N, seed=1), spectral_matrix(M, N)
    lora_ga.init_factors(W, G, rank=N // 2, scaling=1.0)
    with pytest.raises(ValueError):
        lora_ga.init_factors(W, G, rank=N // 2 + 1, scaling=1.0)


# ---------------------------------------------------------------- lora-one init (spec section 5)

@pytest.fixture(scope="module")
def one_init():
    W, G = randn(M, N, seed=4), spectral_matrix(M, N, seed=5)
    W_before = W.clone()
    torch.manual_seed(0)
    A, B, out_W = lora_one.init_factors(W, G, rank=R, scaling=1.3, gamma=128)
    return W_before, W, G, A, B, out_W


def test_lora_one_shapes_and_unchanged_weight(one_init):
    W_before, W, _, A, B, out_W = one_init
    assert A.shape == (R, N) and B.shape == (M, R)
    assert A.dtype == B.dtype == torch.float32
    assert torch.equal(out_W, W_before) and torch.equal(W, W_before)   # returned and input untouched


def test_lora_one_is_one_truncated_gradient_step(one_init):
    # s B A = -(s / (gamma sigma1)) [G]_r: the sign is the descent direction
    _, _, G, A, B, _ = one_init
    U, S, V = exact_svd(G)
    G_r = (U[:, :R] * S[:R]) @ V[:, :R].T
    assert_rel_close(1.3 * B @ A, -(1.3 / (128 * S[0])) * G_r, rtol=1e-4)


def test_lora_one_spectral_norms(one_init):
    _, _, _, A, B, _ = one_init
    expected = torch.tensor(1 / math.sqrt(128))
    torch.testing.assert_close(torch.linalg.matrix_norm(A, ord=2), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.linalg.matrix_norm(B, ord=2), expected, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- init_adapters on a PEFT model

def init_tiny_model(method_name, dtype=torch.float32):
    """Build the method's own LoRA config on Tiny, run its init_adapters with a known G."""
    method = methods.get(method_name)
    hp = method.resolve({"rank": 4})
    config = method.lora_config(hp, ["lin"])
    config.task_type = None   # Tiny is not a causal LM
    torch.manual_seed(0)
    base = Tiny().to(dtype)
    W0, b0 = base.lin.weight.detach().clone(), base.lin.bias.detach().clone()
    model = peft.get_peft_model(base, config)
    G = spectral_matrix(12, 20, seed=6)
    (_, layer), = lora_layers(model)
    assert layer.scaling["default"] == pytest.approx(method.scaling(hp))   # rsLoRA: alpha / sqrt(r)
    method.init_adapters(model, hp, {"lin": G})
    x = randn(5, 20, seed=7)
    return model(x).detach(), x @ W0.T + b0, x, G, hp, method


def test_lora_ga_init_adapters_keeps_output():
    out, base_out, *_ = init_tiny_model("lora-ga")
    torch.testing.assert_close(out, base_out, rtol=1e-5, atol=1e-5)


def test_lora_one_init_adapters_adds_gradient_step():
    out, base_out, x, G, hp, method = init_tiny_model("lora-one")
    U, S, V = exact_svd(G)
    r = hp["rank"]
    G_r = ((U[:, :r] * S[:r]) @ V[:, :r].T).float()
    step = -(method.scaling(hp) / (hp["gamma"] * S[0].item())) * G_r
    assert_rel_close(out - base_out, x @ step.T, rtol=1e-3)


# ---------------------------------------------------------------- preconditioner (spec section 4)

@pytest.mark.parametrize("reg", [1e-6, 1e-2, 100.0])
def test_precondition_formula(reg):
    A, B = randn(R, N, seed=8), randn(M, R, seed=9)
    gA, gB = randn(R, N, seed=10), randn(M, R, seed=11)
    new_A, new_B = precondition(A, B, gA, gB, reg=reg)
    ref_A, ref_B = ref_precondition(A, B, gA, gB, reg)
    assert_rel_close(new_A, ref_A, rtol=1e-5)
    assert_rel_close(new_B, ref_B, rtol=1e-5)


def test_precondition_with_zero_B():
    # B = 0 (LoRA init): (B^T B + reg I)^-1 = I / reg, so the first A steps are huge
    A, B = randn(R, N, seed=8), torch.zeros(M, R)
    gA, gB = randn(R, N, seed=10), randn(M, R, seed=11)
    new_A, new_B = precondition(A, B, gA, gB, reg=1e-2)
    torch.testing.assert_close(new_A, gA / 1e-2, rtol=1e-6, atol=0)
    assert_rel_close(new_B, ref_precondition(A, B, gA, gB, 1e-2)[1], rtol=1e-5)


class Mixed(nn.Module):
    """Layers of three shapes, two of them twice: the preconditioner stacks same-shaped layers."""
    def __init__(self):
        super().__init__()
        self.a1, self.a2, self.b1, self.b2, self.c = (nn.Linear(20, 12), nn.Linear(20, 12),
                                                      nn.Linear(12, 20), nn.Linear(12, 20),
                                                      nn.Linear(20, 7))

    def forward(self, x):
        h = self.b1(self.a1(x)) + self.b2(self.a2(x))
        return self.c(h)


def test_batched_preconditioner_equals_per_layer_formula():
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, target_modules=["a1", "a2", "b1", "b2", "c"], init_lora_weights=False)
    model = peft.get_peft_model(Mixed(), config).to(torch.float64)
    x, y = randn(8, 20, seed=1, dtype=torch.float64), randn(8, 7, seed=2, dtype=torch.float64)
    ((model(x) - y) ** 2).mean().backward()
    layers = [layer for _, layer in lora_layers(model)]
    before = [(l.lora_A["default"].weight.detach().clone(), l.lora_B["default"].weight.detach().clone(),
               l.lora_A["default"].weight.grad.clone(), l.lora_B["default"].weight.grad.clone())
              for l in layers]
    pre = Preconditioner(model, reg=1e-2)
    assert sorted(len(group) for group in pre.groups) == [1, 2, 2]
    pre()
    for layer, (A, B, gA, gB) in zip(layers, before):
        ref_A, ref_B = ref_precondition(A, B, gA, gB, 1e-2)
        assert_rel_close(layer.lora_A["default"].weight.grad, ref_A, rtol=1e-10)
        assert_rel_close(layer.lora_B["default"].weight.grad, ref_B, rtol=1e-10)


# ---------------------------------------------------------------- optimizers' actual steps

def assert_preconditioned_sgd_step(method_name, overrides, lr=0.1):
    """Scaled GD: A -= lr (B^T B + reg I)^-1 g_A and B -= lr g_B (A A^T + reg I)^-1, both from
    the pre-step values."""
    (A0, B0, gA, gB), dA, dB, hp = sgd_step_delta(method_name, overrides, lr)
    pA, pB = ref_precondition(A0, B0, gA, gB, hp["reg"])
    assert_rel_close(dA, -lr * pA, rtol=1e-8)
    assert_rel_close(dB, -lr * pB, rtol=1e-8)
    # the preconditioner matters here: a plain SGD step would be far off
    assert (dA + lr * gA).norm() > 0.1 * dA.norm()
    assert (dB + lr * gB).norm() > 0.1 * dB.norm()


# scaled GD's step is the same in both forms (SGDr's decay-then-step is torch SGD's coupled decay)
@pytest.mark.parametrize("update", ["peft", "reference"])
def test_riemannian_sgd_step(update):
    assert_preconditioned_sgd_step("riemannian", {"optimizer": "sgd", "reg": 1e-2, "update": update})


@pytest.mark.parametrize("update", ["peft", "reference"])
def test_lora_one_preconditioned_sgd_step(update):
    assert_preconditioned_sgd_step("lora-one", {"optimizer": "sgd", "update": update})


def test_lora_one_unpreconditioned_sgd_step():
    (_, _, gA, gB), dA, dB, _ = sgd_step_delta("lora-one", {"optimizer": "sgd", "precondition": False},
                                               lr=0.1)
    torch.testing.assert_close(dA, -0.1 * gA, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(dB, -0.1 * gB, rtol=1e-12, atol=1e-15)


def run_adamw_against_reference(method_name, overrides, *, preconditioned, lr=1e-2, steps=3):
    """Step the method's optimizer and a plain torch AdamW side by side for a few batches. The
    reference AdamW is fed the preconditioned (or, if not `preconditioned`, the raw) gradients of
    the method's model. Several steps, because Adam's first step is about -lr * sign(g) and would
    barely see the preconditioner. Returns the largest gap to a plain AdamW fed the raw gradients."""
    method = methods.get(method_name)
    hp = method.resolve(overrides)
    model = tiny_peft()
    opt = method.optimizer(model, lr, hp, weight_decay=0.0)
    A, B = factors(model)
    ref = [A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()]
    raw = [A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()]
    ref_opt = torch.optim.AdamW(ref, lr=lr, weight_decay=0.0)
    raw_opt = torch.optim.AdamW(raw, lr=lr, weight_decay=0.0)
    for step in range(steps):
        backward_on_batch(model, seed=10 + step)
        A0, B0, gA, gB = snapshot(model)
        torch.testing.assert_close(ref[0].detach(), A0, rtol=1e-10, atol=1e-12)   # same pre-step point
        ref[0].grad, ref[1].grad = (ref_precondition(A0, B0, gA, gB, hp["reg"]) if preconditioned
                                    else (gA, gB))
        raw[0].grad, raw[1].grad = gA.clone(), gB.clone()
        opt.step()
        ref_opt.step()
        raw_opt.step()
        torch.testing.assert_close(A.detach(), ref[0].detach(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(B.detach(), ref[1].detach(), rtol=1e-9, atol=1e-12)
    return max((A.detach() - raw[0].detach()).abs().max(), (B.detach() - raw[1].detach()).abs().max())


# update: peft (PEFT's form); the default, reference, is checked in tests/test_reference_optimizer.py
def test_riemannian_peft_adamw_step():
    gap = run_adamw_against_reference("riemannian", {"optimizer": "adamw", "reg": 1e-3, "update": "peft"},
                                      preconditioned=True)
    assert gap > 1e-4   # the preconditioned run is measurably not plain AdamW (lr is 1e-2)


def test_lora_one_peft_adamw_step():
    gap = run_adamw_against_reference("lora-one", {"update": "peft"}, preconditioned=True)
    assert gap > 1e-4


def test_lora_one_unpreconditioned_adamw_is_plain():
    hp = methods.get("lora-one").resolve({"precondition": False})
    assert type(methods.get("lora-one").optimizer(tiny_peft(), 1e-2, hp, 0.0)) is torch.optim.AdamW
    gap = run_adamw_against_reference("lora-one", {"precondition": False}, preconditioned=False)
    assert gap < 1e-12


# ---------------------------------------------------------------- hyperparameter validation

ALL = methods.names()


def test_all_methods_registered_and_defaults_resolve():
    assert {"lora", "pissa", "lora-ga", "riemannian", "lora-one", "dora", "olora", "lora-plus", "eva",
            "lora-ga-peft"} <= set(ALL)
    for name in ALL:
        hp = methods.get(name).resolve({})
        assert hp["rank"] == 8 and hp["alpha"] > 0


def test_direct_import_does_not_hide_methods(monkeypatch):
    # regression: names() used to discover the method modules only while the registry was empty,
    # so importing one method module first (as this file does) left the others unknown. Simulate
    # "lora not imported yet" in this process; monkeypatch puts everything back afterwards.
    monkeypatch.delitem(sys.modules, "methods.lora")
    monkeypatch.delattr(methods, "lora")
    monkeypatch.delitem(methods.REGISTRY, "lora")
    assert methods.names() == sorted(ALL)


def test_spec_defaults():
    ga, one = methods.get("lora-ga").resolve({}), methods.get("lora-one").resolve({})
    assert ga["use_rslora"] and ga["gamma"] == 16
    assert one["use_rslora"] and one["gamma"] == 128 and one["precondition"] is True
    assert one["update"] == methods.get("riemannian").resolve({})["update"] == "reference"
    assert methods.get("lora-ga").mutates_base and not methods.get("lora-one").mutates_base
    assert methods.get("lora-ga").data_samples == methods.get("lora-one").data_samples == "grad_samples"


BAD = [(name, bad) for name in ALL
       for bad in ({"no_such_key": 1}, {"rank": 0}, {"rank": 2.5}, {"rank": True})]
BAD += [(name, {"reg": -1}) for name in ("riemannian", "lora-one")]
BAD += [(name, {"gamma": "x"}) for name in ("lora-ga", "lora-one")]
BAD += [(name, {"optimizer": "adam"}) for name in ("riemannian", "lora-one")]
BAD += [("lora-one", {"precondition": "yes"})]
BAD += [("eva", {"rho": 0.5}), ("eva", {"tau": 1.0}), ("lora-plus", {"lr_ratio": 0})]
BAD += [(name, {"update": "paper"}) for name in ("riemannian", "lora-one")]


@pytest.mark.parametrize("name,overrides", BAD, ids=lambda v: v if isinstance(v, str) else repr(v))
def test_bad_hyperparameters_are_usage_errors(name, overrides):
    method = methods.get(name)   # outside pytest.raises: an unknown *method* must not count
    (key,) = overrides
    with pytest.raises(UsageError, match=re.escape(key)):
        method.resolve(overrides)


def test_good_overrides_are_accepted():
    hp = methods.get("lora-one").resolve({"rank": 16, "gamma": 64, "reg": 1e-3,
                                          "optimizer": "sgd", "precondition": False})
    assert (hp["rank"], hp["gamma"], hp["reg"], hp["optimizer"], hp["precondition"]) == \
        (16, 64, 1e-3, "sgd", False)


# ---------------------------------------------------------------- the PEFT-computed methods, against their docstrings

def peft_init(name, overrides, grad=None):
    """(W before, the PEFT model) of Tiny under a method's config, its data pass fed `grad`."""
    method, model = methods.get(name), Tiny()
    hp = method.resolve({"rank": 2, **overrides})
    W = model.lin.weight.detach().clone()
    if grad is not None:   # the data pass, with the gradient planted instead of estimated
        model.lin._peft_loraga_grad = grad
    config = method.lora_config(hp, ["lin"])
    config.task_type = None   # a bare module, not a causal LM
    torch.manual_seed(0)
    return W, peft.get_peft_model(model, config), method.scaling(hp)


def test_olora_init_is_the_qr_of_w():
    W, model, s = peft_init("olora", {"alpha": 3.0})
    A, B = factors(model)
    Q, R_ = torch.linalg.qr(W)
    torch.testing.assert_close(B, Q[:, :2])
    torch.testing.assert_close(A, R_[:2])
    torch.testing.assert_close(model.base_model.model.lin.get_base_layer().weight, W - s * B @ A)


def test_lora_ga_peft_init_is_pefts_not_the_papers():
    G = spectral_matrix(12, 20, seed=7)
    W, model, s = peft_init("lora-ga-peft", {"gamma": 4.0}, grad=G)
    A, B = factors(model)
    U, S, V = exact_svd(G)
    c = 12 ** 0.25 / math.sqrt(4.0)
    torch.testing.assert_close(A @ A.T, torch.eye(2), rtol=0, atol=1e-5)     # A unscaled: V[:, :r]ᵀ
    assert (projector(A.T) - projector(V[:, :2])).norm() < 1e-4
    torch.testing.assert_close(B.T @ B, torch.diag(c * S[2:4].float()) ** 2, rtol=1e-4, atol=1e-5)
    assert (projector(B) - projector(U[:, 2:4])).norm() < 1e-4
    torch.testing.assert_close(model.base_model.model.lin.get_base_layer().weight, W - s * B @ A)


def test_eva_factor_is_the_top_principal_directions_of_the_inputs():
    from peft.tuners.lora.eva import get_eva_state_dict
    scales = 3.0 * 0.5 ** torch.arange(20.0)   # well separated principal directions
    basis = torch.linalg.qr(randn(20, 20, seed=8)).Q
    batches = [{"x": randn(50, 20, seed=9 + k) * scales @ basis.T + 1.0} for k in range(4)]
    # tau near 1: cycling the batches until the components stop moving approaches the PCA of them all
    hp = methods.get("eva").resolve({"rank": 2, "rho": 1.0, "tau": 0.99999})
    config = methods.get("eva").lora_config(hp, ["lin"])
    found = get_eva_state_dict(Tiny(), batches, peft_config=config, forward_fn=lambda m, b: m(b["x"]),
                               prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None, show_progress_bar=False)
    X = torch.cat([b["x"] for b in batches])
    centred, raw = (torch.linalg.svd(M, full_matrices=False).Vh[:2].T for M in (X - X.mean(0), X))
    assert found["lin"].shape == (2, 20)
    assert (projector(found["lin"].T) - projector(centred)).norm() < 0.02   # the PCA of the inputs,
    assert (projector(found["lin"].T) - projector(raw)).norm() > 1          # not their raw SVD


def test_dora_magnitude_starts_at_the_row_norms_of_w():
    W, model, _ = peft_init("dora", {})
    (_, layer), = lora_layers(model)
    torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight, W.norm(dim=1))


@pytest.mark.parametrize("ratio", [1.0, 16.0])
def test_lora_plus_trains_b_at_ratio_times_as_lr(ratio):
    model = tiny_peft()
    optimizer = methods.get("lora-plus").optimizer(model, 1e-3, methods.get("lora-plus").resolve(
        {"lr_ratio": ratio}), 0.1)
    A, B = factors(model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(A)] == 1e-3 and lr_of[id(B)] == pytest.approx(1e-3 * ratio)
    assert {g["weight_decay"] for g in optimizer.param_groups if g["params"] and g["lr"] == 1e-3} == {0.1}
