"""Robustness reports on synthetic sweeps whose answers are known by construction."""

import json
import math

import pytest

from reports import analyze, write_report

LADDER = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
D, F = "diverged", "failed"
DECADE_3X = math.log10(3)


def trial(method, lr, seed=0, hparams=None, status="finished", history=(), **metrics):
    row = {"method": method, "lr": lr, "seed": seed, "hparams": hparams or {}, "status": status,
           "val_loss": None, "gsm8k_strict": None, "gsm8k_strict_stderr": None,
           "gsm8k_flexible": None, "gsm8k_flexible_stderr": None, "history": [list(p) for p in history]}
    if status == F:
        row["error"] = "CUDA out of memory <rank 0>\nTraceback ..."
    return row | metrics


def ladder(method, losses, *, seed=0, shift=0.0, hparams=None, histories=None):
    """One trial per rung of LADDER; D / F mark a diverged / failed trial."""
    return [trial(method, lr, seed, hparams, status=v) if v in (D, F) else
            trial(method, lr, seed, hparams, history=(histories or {}).get(lr, ()), val_loss=v + shift)
            for lr, v in zip(LADDER, losses)]


PISSA = [1.3, 0.98, 0.99, 1.0, 1.02, 1.6]
LORA_GA = [1.2, 0.99, 1.1, 1.3, D, D]
SWEEP = (
    ladder("lora", [1.5, 1.2, 1.0, 1.03, 1.2, D], histories={1e-4: [(0, 1.9), (10, 1.5), (20, 1.2), (30, 1.0)]})
    # pissa: a wide flat region; two seeds at -/+0.01 give std 0.01*sqrt(2) and se 0.01
    + ladder("pissa", PISSA, seed=0, shift=-0.01, histories={3e-5: [(0, 1.9), (10, 1.0), (20, 0.97)]})
    + ladder("pissa", PISSA, seed=1, shift=+0.01, histories={3e-5: [(0, 1.9), (10, 1.1), (20, 0.99)]})
    # lora-ga: within noise of pissa, a one-rung window, both seeds diverge at the top
    + ladder("lora-ga", LORA_GA, seed=0, shift=-0.01) + ladder("lora-ga", LORA_GA, seed=1, shift=+0.01)
    # riemannian: two reg values, the better one is kept at each lr
    + ladder("riemannian", [1.6, 1.3, 1.1, 1.05, 1.06, 1.2], hparams={"reg": 1e-6})
    + ladder("riemannian", [1.5, 1.4, 1.08, 1.07, 1.04, D], hparams={"reg": 1e-4},
             histories={1e-3: [(0, 1.9), (10, 1.3), (20, 1.04)]})
    # lora-one: the crash at 3e-4 ends a window that would otherwise reach 1e-4 (1.03)
    + ladder("lora-one", [1.4, 1.1, 1.03, F, 1.01, 1.02], histories={1e-3: [(0, 1.9), (10, 1.0), (20, 1.01)]})
)


@pytest.fixture(scope="module")
def loss():
    return analyze(SWEEP)


def rung(analysis, method, lr):
    return next(r for r in analysis["methods"][method]["rungs"] if r["lr"] == lr)


@pytest.mark.parametrize("method,best_lr,best,low,high,decades", [
    ("lora", 1e-4, 1.0, 1e-4, 3e-4, DECADE_3X),
    ("pissa", 3e-5, 0.98, 3e-5, 1e-3, math.log10(1e-3 / 3e-5)),
    ("lora-ga", 3e-5, 0.99, 3e-5, 3e-5, 0.0),
    ("riemannian", 1e-3, 1.04, 1e-4, 1e-3, 1.0),
    ("lora-one", 1e-3, 1.01, 1e-3, 3e-3, DECADE_3X),
])
def test_best_lr_and_robust_window(loss, method, best_lr, best, low, high, decades):
    m = loss["methods"][method]
    assert loss["ladder"] == LADDER
    assert (m["best_lr"], m["window"]["low"], m["window"]["high"]) == (best_lr, low, high)
    assert m["best_score"] == pytest.approx(best)
    assert m["window"]["decades"] == pytest.approx(decades)


def test_seeds_pool_into_mean_spread_and_se(loss):
    r = rung(loss, "pissa", 3e-5)
    assert r["n"] == 2 and r["status"] == "ok"
    assert r["val_loss"] == pytest.approx(0.98)
    assert r["val_loss_std"] == pytest.approx(0.01 * math.sqrt(2))
    assert r["se"] == pytest.approx(0.01)
    assert rung(loss, "lora", 1e-4)["se"] is None  # one seed: noise unknown


def test_best_hparams_are_chosen_per_lr(loss):
    rungs = loss["methods"]["riemannian"]["rungs"]
    assert [r["hparams"]["reg"] for r in rungs] == [1e-4, 1e-6, 1e-4, 1e-6, 1e-4, 1e-6]
    assert [r["score"] for r in rungs] == pytest.approx([1.5, 1.3, 1.08, 1.05, 1.04, 1.2])
    top = rungs[-1]  # the other reg diverged here: counted, but the kept one is clean
    assert (top["status"], top["combos"], top["diverged"]) == ("ok", 2, 1)
    assert loss["methods"]["riemannian"]["best_hparams"] == {"reg": 1e-4}


def test_diverged_and_failed_rungs_are_reported(loss):
    top = rung(loss, "lora", 3e-3)
    assert (top["status"], top["score"], top["diverged"], top["trials"]) == ("diverged", None, 1, 1)
    assert [r["status"] for r in loss["methods"]["lora-ga"]["rungs"][-2:]] == [D, D]
    assert loss["methods"]["lora-ga"]["diverged"] == 4
    crash = rung(loss, "lora-one", 3e-4)
    assert (crash["status"], crash["score"], crash["failed"]) == ("failed", None, 1)
    assert loss["methods"]["lora-one"]["failed"] == 1


def test_a_partly_diverged_rung_is_unstable_and_ends_the_window():
    rows = [trial("x", lr, seed, val_loss=1.0) for lr in (1e-4, 1e-3) for seed in (0, 1)]
    rows += [trial("x", 3e-4, 0, val_loss=0.9), trial("x", 3e-4, 1, status=D)]
    m = analyze(rows)["methods"]["x"]
    middle = m["rungs"][1]
    assert (middle["status"], middle["n"], middle["score"], middle["diverged"]) == ("unstable", 1, 0.9, 1)
    assert m["best_lr"] == 1e-4  # 0.9 at 3e-4 is not a safe best: a seed diverged there
    assert (m["window"]["low"], m["window"]["high"], m["window"]["decades"]) == (1e-4, 1e-4, 0.0)


def test_reference_lr_and_steps_to_target(loss):
    # lora's best lr; the target is the loss every method reaches: the worst best-lr loss, riemannian's
    assert (loss["reference_lr"], loss["target_loss"]) == (1e-4, 1.04)
    at_reference = {n: m["score_at_reference"] for n, m in loss["methods"].items()}
    assert at_reference == pytest.approx({"lora": 1.0, "pissa": 0.99, "lora-ga": 1.1, "riemannian": 1.08,
                                          "lora-one": 1.03})
    steps = {n: (m["steps_to_target"], m["target_reached"]) for n, m in loss["methods"].items()}
    assert steps == {"lora": (30, [1, 1]), "pissa": (15, [2, 2]), "lora-ga": (None, [0, 2]),  # no history
                     "riemannian": (20, [1, 1]), "lora-one": (10, [1, 1])}
    steps, losses = zip(*loss["methods"]["pissa"]["best_curve"])  # mean over seeds
    assert steps == (0, 10, 20) and losses == pytest.approx((1.9, 1.05, 0.98))

    given = analyze(SWEEP, reference_lr=2e-3)  # not on the ladder
    assert all(m["score_at_reference"] is None for m in given["methods"].values())

    no_lora = analyze([r for r in SWEEP if r["method"] != "lora"])
    assert no_lora["reference_lr"] == 3e-5  # best of pissa and lora-ga; 1e-3 (2 methods) loses the tie
    assert "2 of 4" in no_lora["reference_source"]
    assert no_lora["target_loss"] == pytest.approx(1.04)  # the worst best-lr loss: riemannian's


def test_ranking_flags_ties_within_noise(loss):
    ranking = loss["ranking"]
    assert [r["method"] for r in ranking] == ["pissa", "lora-ga", "lora", "lora-one", "riemannian"]
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4, 5]
    # pissa and lora-ga seeds spread by ~1.4% (log scale, 10 df): one-seed rungs borrow that noise,
    # so the 0.01-0.03 gaps are within noise and only riemannian (last) has no next
    assert [r["tied_with_next"] for r in ranking] == [True, True, True, True, False]
    assert ranking[0]["note"].startswith("within noise of lora-ga (difference -0.01, 95% CI")
    assert ranking[1]["note"].endswith("noise: seeds)")
    single = analyze([r for r in SWEEP if r["seed"] == 0])  # no rung has two seeds: noise unknown
    assert single["ranking"][0]["note"] == "noise unknown: one seed per rung (vs lora-ga)"
    assert [r["tied_with_next"] for r in single["ranking"]] == [False] * 5


def accuracy_sweep():
    rows = []
    for method, shifts, values in [("lora", [0.0], [0.30, 0.40, 0.45, 0.43, 0.42, D]),
                                   ("pissa", [-0.01, 0.01], [0.35, 0.30, 0.20, 0.10, D, D])]:
        for seed, shift in enumerate(shifts):
            rows += [trial(method, lr, seed, status=D) if v == D else
                     trial(method, lr, seed, gsm8k_flexible=v + shift, gsm8k_flexible_stderr=0.01,
                           gsm8k_strict=v + shift - 0.05, gsm8k_strict_stderr=0.01)
                     for lr, v in zip(LADDER, values)]
    return rows


def test_accuracy_mode_uses_flexible_extract_and_acc_tol():
    acc = analyze(accuracy_sweep(), metric="accuracy")
    lora = acc["methods"]["lora"]
    assert (lora["best_lr"], lora["best_score"], lora["best_se"]) == (1e-4, 0.45, 0.01)
    assert rung(acc, "lora", 1e-4)["gsm8k_strict"] == pytest.approx(0.40)
    assert (lora["window"]["low"], lora["window"]["high"]) == (1e-4, 3e-4)  # 0.43 sits exactly at 0.45 - 0.02
    wide = analyze(accuracy_sweep(), metric="accuracy", acc_tol=0.03)["methods"]["lora"]["window"]
    assert (wide["low"], wide["high"], wide["decades"]) == (1e-4, 1e-3, 1.0)  # 3e-3 diverged: the window stops
    pissa = acc["methods"]["pissa"]
    assert pissa["best_score"] == pytest.approx(0.35)
    assert pissa["best_se"] == pytest.approx(math.sqrt(0.0002 / 2 + 0.01 ** 2))  # seed var / n + lm-eval stderr^2
    assert [(r["method"], r["tied_with_next"]) for r in acc["ranking"]] == [("lora", False), ("pissa", False)]
    assert acc["ranking"][0]["note"].startswith("ahead of pissa")


@pytest.mark.parametrize("kwargs,rows,message", [
    ({"metric": "loss"}, SWEEP, "metric must be"),
    ({}, [], "no trial rows"),
    ({}, [trial("lora", 1e-4, status="running")], "trial status"),
])
def test_bad_input_is_refused(kwargs, rows, message):
    with pytest.raises(ValueError, match=message):
        analyze(rows, **kwargs)


def test_write_report_makes_three_self_contained_files(loss, tmp_path):
    extra = [("Since last night", "<p>pissa <b>improved</b></p>", "pissa **improved**")]
    paths = write_report(loss, SWEEP, tmp_path / "out", title="GSM8K <cpu> & co", extra_sections=extra)
    assert sorted(p.name for p in paths.values()) == ["report.html", "report.json", "report.md"]
    page = paths["html"].read_text()
    assert page.count('<img src="data:image/png;base64,') == 3
    assert page.count('alt="') == 3
    assert all(name in page for name in loss["methods"])
    assert "<title>GSM8K &lt;cpu&gt; &amp; co</title>" in page
    assert "CUDA out of memory &lt;rank 0&gt;" in page  # the failed trial's error, escaped
    assert not any(tag in page for tag in ("<link", "<script", "http://", "https://"))
    assert "<h2>Since last night</h2>\n<p>pissa <b>improved</b></p>\n<h2>How the numbers are computed</h2>" in page
    md = paths["markdown"].read_text()
    assert "## Summary\n\n| method | best lr | best score | hparams at best | robust window |" in md
    assert "| pissa | 3e-5 | 0.9800 ± 0.0100 | defaults | [3e-5, 1e-3] | 1.52 |" in md
    # 3e-3 is lora-one's top rung: its window may go on above it; one seed: no se, and it says so
    assert ("| lora-one | 1e-3 | 1.0100 (1 seed: no se) | defaults | [1e-3, 3e-3] open above | ≥0.48 "
            "| 1.0300 (1 seed: no se) | 10 (1/1 seeds) | 0 | 1 | [1e-4, 3e-3]; ") in md
    assert "stopped" not in md.split("## Ranking")[0]  # no scheduler stopped a trial: no column
    assert md.startswith("# GSM8K <cpu> & co\n\n**Verdict.** pissa is best: validation loss 0.98 ± 0.01 (se) at lr 3e-5.")
    assert '<p class="verdict"><b>Verdict.</b> pissa is best' in page
    assert "| lora | 3e-3 | diverged |" in md
    assert md.index("## Since last night\n\npissa **improved**") < md.index("## How the numbers are computed")
    assert json.loads(paths["json"].read_text()) == loss


def test_gradient_norms_at_the_best_lr_are_averaged_and_plotted(tmp_path):
    rows = [trial("lora", 1e-4, seed, val_loss=1.0, grad_norm=[[8, 2.0 + seed], [16, 40.0 * (1 + seed)]])
            for seed in (0, 1)] + [trial("lora", 1e-3, 0, val_loss=1.5, grad_norm=[[8, 1e3]])]
    analysis = analyze(rows)
    assert analysis["methods"]["lora"]["grad_norm_curve"] == [[8, 2.5], [16, 60.0]]  # best lr only
    page = write_report(analysis, rows, tmp_path, title="t")["html"].read_text()
    assert page.count('<img src="data:image/png;base64,') == 4
    assert "gradient norm before clipping" in page


SETTING = {"task": "gsm8k", "model": "smollm2-135m", "budget": "24 steps of 4 examples of ≤ 160 tokens",
           "validation": "validation loss on 16 held-out rows", "questions": "10 test questions scored",
           "search": "grid search", "score_reason": "only 10 GSM8K questions were scored per trial"}


def test_report_answers_first_and_every_score_has_its_uncertainty(tmp_path):
    page = write_report(analyze(SWEEP, setting=SETTING), SWEEP, tmp_path, title="t")["markdown"].read_text()
    verdict, setting, score = page.split("\n\n")[1:4]
    assert verdict.startswith("**Verdict.** pissa is best")
    assert setting == ("Setting: task gsm8k; model smollm2-135m; 24 steps of 4 examples of ≤ 160 tokens; "
                       "validation loss on 16 held-out rows; 10 test questions scored; 2 seeds; "
                       "ladder 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3 (6 rungs); grid search, 48 trials.")
    assert score == ("Score: validation loss (lower is better), because only 10 GSM8K questions were "
                     "scored per trial.")
    for word in ("nan", "None", "never"):
        assert word not in page.replace("noise", "")
    assert "GSM8K strict" not in page  # nothing was scored: no GSM8K columns
    summary = [line for line in page.split("## Summary")[1].split("## Ranking")[0].splitlines() if line][2:]
    scores = [row.split(" | ")[2] for row in summary]
    assert len(scores) == 5 and all("±" in s or "(1 seed: no se)" in s for s in scores)


def test_toy_risks_print_in_scientific_notation_on_log_axes(tmp_path):
    from reports import plots
    risks = {"lora-one": [1.2e-28, 3.5e-16, 4.1e-6], "lora": [1.1e-4, 0.015, 0.05], "pissa": [0.88, 0.9, 0.95]}
    rows = [trial(m, lr, val_loss=v, val_loss_init=1.0, history=[(0, 1.0), (100, v)])
            for m, vs in risks.items() for lr, v in zip([0.5, 0.25, 0.125], vs)]
    a = analyze(rows, loss_name="risk", setting={"task": "toy-linear-illcond"})
    md = write_report(a, rows, tmp_path, title="toy")["markdown"].read_text()
    assert "1.200e-28 (1 seed: no se)" in md and "1.100e-04 (1 seed: no se)" in md
    assert "0.0000" not in md and "0.0001" not in md
    assert md.count("**Verdict.** lora-one is best: risk 1.200e-28 at lr 5e-1.") == 1
    # the 5% window is relative: 3.5e-16 is not within 5% of 1.2e-28
    assert a["methods"]["lora-one"]["window"]["rungs"] == 1
    main = plots.score_vs_lr_figure(a).axes[0]
    assert main.get_yscale() == "log"
    # every best is the ladder's top or bottom rung: marked, and the legend says what the arrow means
    assert "best lr at the ladder's edge: optimum may lie beyond" in [t.get_text() for t in main.get_legend().get_texts()]
    assert plots.loss_curves_figure(a).axes[0].get_yscale() == "log"
    heat = plots.heatmap_figure(a).axes[0]
    assert "1.20e-28" in [t.get_text() for t in heat.texts]
    assert heat.images[0].norm.__class__.__name__ == "LogNorm"


def test_lr_plot_draws_each_window_on_its_own_row_and_lists_only_marks_that_occur():
    from reports import plots
    rows = [trial(m, lr, val_loss=v) for m in ("a", "b", "c") for lr, v in zip((1e-3, 2e-3, 4e-3), (1.1, 1.0, 1.02))]
    rows += [trial("a", 8e-3, status=D)]  # every best is inside the ladder: no edge mark
    fig = plots.score_vs_lr_figure(analyze(rows))
    main, strip = fig.axes
    assert [t.get_text() for t in strip.get_yticklabels()] == ["a", "b", "c"]
    bars = [p for p in strip.patches]
    assert len(bars) == 3 and len({round(b.get_y(), 3) for b in bars}) == 3  # three windows, three rows
    assert [b.get_facecolor()[:3] for b in bars] == [plots._color(i)[:3] for i in range(3)]
    labels = [t.get_text() for t in main.get_legend().get_texts()]
    assert labels == ["a", "b", "c", "best lr of the method", "diverged (every seed)"]
    assert main.get_yscale() == "linear"
