"""How sure the verdict is (reports.statistics), on synthetic rows whose answers are known."""

import math
import statistics

import pytest

from reports import analyze, write_report
from reports import statistics as st

LADDER = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]


def row(method, lr, seed=0, **metrics):
    return {"method": method, "lr": lr, "seed": seed, "hparams": {}, "status": "finished", "history": [],
            "val_loss": None, "val_loss_init": None, "gsm8k_strict": None, "gsm8k_strict_stderr": None,
            "gsm8k_flexible": None, "gsm8k_flexible_stderr": None, "gsm8k_n": None} | metrics


def losses(method, values_by_lr, **extra):
    """{lr: [val loss per seed]} -> rows."""
    return [row(method, lr, seed, val_loss=v, **extra) for lr, vs in values_by_lr.items() for seed, v in enumerate(vs)]


def accuracies(method, values_by_lr, questions):
    """{lr: [accuracy per seed]} -> rows scored on `questions` GSM8K questions."""
    return [row(method, lr, seed, gsm8k_flexible=v, gsm8k_strict=v, gsm8k_n=questions, val_loss=1.0)
            for lr, vs in values_by_lr.items() for seed, v in enumerate(vs)]


def rung(analysis, method, lr):
    return next(r for r in analysis["methods"][method]["rungs"] if r["lr"] == lr)


# --- accuracy intervals ---

@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0)])
def test_wilson_interval_known_values(k, n, low, high):
    assert st.wilson(k, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_upper_bound_of_zero_is_z2_over_n_plus_z2():
    for n in (10, 50, 1319):
        assert st.wilson(0, n)[1] == pytest.approx(st.Z ** 2 / (n + st.Z ** 2))


def test_accuracy_interval_widens_wilson_by_seed_noise_in_quadrature():
    wl, wh = st.wilson(5, 10)
    assert st.accuracy_interval(0.5, 10) == pytest.approx([wl, wh])
    wide = st.accuracy_interval(0.5, 10, seed_se=0.05, t=2.0)
    assert wide == pytest.approx([0.5 - math.hypot(0.5 - wl, 0.1), 0.5 + math.hypot(wh - 0.5, 0.1)])
    assert st.accuracy_interval(0.3, None, stderr=0.02) == pytest.approx([0.3 - st.Z * 0.02, 0.3 + st.Z * 0.02])
    assert st.accuracy_interval(0.3, None) is None  # no count, no stderr, no seeds: unknown
    assert st.accuracy_interval(0.01, 10, seed_se=0.5)[0] == 0.0  # clipped to [0, 1]


def test_zero_of_ten_reads_as_an_interval_not_zero_plus_minus_zero(tmp_path):
    rows = accuracies("lora", {1e-4: [0.0], 1e-3: [0.5]}, questions=10)
    a = analyze(rows, metric="accuracy")
    assert rung(a, "lora", 1e-4)["ci"] == pytest.approx([0.0, 0.2775], abs=5e-5)  # one seed: Wilson only
    md = write_report(a, rows, tmp_path, title="t")["markdown"].read_text()
    assert "| lora | 1e-4 | ok | 1 | 1.0000 (1 seed) | 0% (0–27.8%) | 0% (0–27.8%) | 10 |" in md
    assert "0.0% ± 0.0" not in md


def test_seeds_on_the_same_questions_pool_their_counts_and_widen_by_the_seed_spread():
    # three rungs of three seeds, each spread +-0.02 around its mean: pooled sd 0.02 with 6 df
    by_lr = {1e-4: [0.28, 0.30, 0.32], 3e-4: [0.38, 0.40, 0.42], 1e-3: [0.33, 0.35, 0.37]}
    a = analyze(accuracies("lora", by_lr, questions=200), metric="accuracy")
    noise = a["noise"]["gsm8k_flexible"]
    assert (noise["sd"], noise["df"], noise["rungs"]) == (pytest.approx(0.02), 6, 3)
    wl, wh = st.wilson(0.40 * 200, 200)  # the mean count: 80 of 200
    d = st.t975(6) * 0.02 / math.sqrt(3)
    assert rung(a, "lora", 3e-4)["ci"] == pytest.approx([0.40 - math.hypot(0.40 - wl, d), 0.40 + math.hypot(wh - 0.40, d)])
    assert a["methods"]["lora"]["best_ci"] == rung(a, "lora", 3e-4)["ci"]


def test_seed_noise_is_pooled_over_rungs_absolute_for_accuracy_and_log_for_loss():
    def r(values, status="ok"):
        return {"status": status, "seed_values": {"gsm8k_flexible": values, "val_loss": values}}
    rungs = [r([1.0, 3.0]), r([2.0, 2.0, 5.0]), r([9.0]), r([1.0, 100.0], status="unstable")]
    acc = st.seed_noise(rungs, "gsm8k_flexible")  # variances 2 (1 df) and 3 (2 df)
    assert (acc["sd"], acc["df"], acc["rungs"], acc["scale"]) == (pytest.approx(math.sqrt(8 / 3)), 3, 2, "absolute")
    loss = st.seed_noise([r([1.0, math.exp(0.2)]), r([1e-28, 1e-28 * math.exp(0.2)])], "val_loss")
    assert loss["sd"] == pytest.approx(statistics.stdev([0.0, 0.2]))  # relative: scale-free
    assert st.seed_noise([r([1.0]), r([2.0])], "val_loss") is None


def test_t_quantiles():
    assert (st.t975(1), st.t975(10), st.t975(11), st.t975(None), st.t975(10_000)) == (12.706, 2.228, 2.228, st.Z, st.Z)


# --- best lr by bootstrap ---

CLEAR = {1e-5: [2.0, 2.02], 1e-4: [1.0, 1.02], 1e-3: [1.5, 1.52]}
CLOSE = {1e-5: [2.0, 2.02], 1e-4: [1.0, 1.04, 0.98], 1e-3: [1.01, 0.99, 1.03]}


def test_bootstrap_is_deterministic_given_its_seed():
    rows = losses("a", CLOSE)
    first, again = analyze(rows)["methods"]["a"]["best_lr_ci"], analyze(rows)["methods"]["a"]["best_lr_ci"]
    assert first == again
    other = analyze(rows, bootstrap_seed=1)["methods"]["a"]["best_lr_ci"]
    assert other["shares"] != first["shares"]
    assert analyze(rows, resamples=200)["methods"]["a"]["best_lr_ci"]["resamples"] == 200


def test_bootstrap_pins_a_clear_best_and_spreads_over_a_near_tie():
    clear = analyze(losses("a", CLEAR))["methods"]["a"]["best_lr_ci"]
    assert (clear["low"], clear["high"], clear["modal_lr"], clear["modal_share"]) == (1e-4, 1e-4, 1e-4, 1.0)
    close = analyze(losses("a", CLOSE))["methods"]["a"]["best_lr_ci"]
    shares = dict(map(tuple, close["shares"]))
    assert (close["low"], close["high"]) == (1e-4, 1e-3)
    assert 0.2 < shares[1e-4] < 0.8 and 0.2 < shares[1e-3] < 0.8 and shares[1e-5] == 0
    assert close["modal_share"] == max(shares.values())


def test_bootstrap_borrows_pooled_noise_for_one_seed_rungs_or_says_unknown():
    one_seed = losses("a", {1e-4: [1.0], 1e-3: [1.001]})
    alone = analyze(one_seed)["methods"]["a"]["best_lr_ci"]
    assert alone["low"] is None and alone["note"].startswith("unknown")
    # another method's two-seed rungs give a pooled noise of ~1%: a 0.1% gap is then a coin flip
    pooled = analyze(one_seed + losses("b", {1e-4: [1.0, 1.014], 1e-3: [1.2, 1.186]}))["methods"]["a"]["best_lr_ci"]
    assert (pooled["low"], pooled["high"]) == (1e-4, 1e-3)
    # accuracy without any seed noise still has the question noise: 40% vs 41% of 100 questions
    acc = analyze(accuracies("a", {1e-4: [0.40], 1e-3: [0.41]}, questions=100), metric="accuracy")
    assert (acc["methods"]["a"]["best_lr_ci"]["low"], acc["methods"]["a"]["best_lr_ci"]["high"]) == (1e-4, 1e-3)


# --- pairwise differences ---

NOISE = {1e-5: [3.0, 3.06, 2.94]}  # a far, worse rung of every method: more df for the pooled noise


def test_a_clear_winner_is_decided_with_the_known_interval():
    rows = losses("a", {**NOISE, 1e-4: [1.0, 1.02, 0.98]}) + losses("b", {**NOISE, 1e-4: [2.0, 2.04, 1.96]})
    a = analyze(rows)
    c = a["comparisons"][0]
    assert (c["a"], c["b"], c["decided"], c["noise"]) == ("a", "b", True, "seeds")
    sd, df = a["noise"]["val_loss"]["sd"], a["noise"]["val_loss"]["df"]
    half = st.t975(df) * math.sqrt((1.0 * sd) ** 2 / 3 + (2.0 * sd) ** 2 / 3)  # relative sd scales with the loss
    assert (c["diff"], c["low"], c["high"]) == pytest.approx((-1.0, -1.0 - half, -1.0 + half))
    assert a["ranking"][0]["tied_with_next"] is False and a["ranking"][0]["note"].startswith("ahead of b")
    assert "It beats every other method beyond noise: decided." in a["verdict"]


def test_a_coin_flip_pair_is_within_noise():
    rows = losses("a", {**NOISE, 1e-4: [1.0, 1.1, 0.9]}) + losses("b", {**NOISE, 1e-4: [1.05, 0.95, 1.0]})
    a = analyze(rows)
    c = a["comparisons"][0]
    assert c["decided"] is False and c["low"] < 0 < c["high"]
    assert a["ranking"][0]["tied_with_next"] is True
    assert "within noise of b: not decided" in a["verdict"]


def test_accuracy_difference_counts_the_binomial_error_of_the_questions():
    rows = accuracies("a", {1e-4: [0.52]}, questions=100) + accuracies("b", {1e-4: [0.50]}, questions=100)
    c = analyze(rows, metric="accuracy")["comparisons"][0]
    half = st.Z * math.sqrt(0.52 * 0.48 / 100 + 0.5 * 0.5 / 100)
    assert (c["decided"], c["noise"]) == (False, "questions")
    assert (c["low"], c["high"]) == pytest.approx((0.02 - half, 0.02 + half))
    assert "seed noise unknown" in c["note"]
    clear = accuracies("a", {1e-4: [0.80]}, questions=200) + accuracies("b", {1e-4: [0.20]}, questions=200)
    assert analyze(clear, metric="accuracy")["comparisons"][0]["decided"] is True


def test_one_seed_loss_with_nothing_to_pool_is_unknown_and_the_verdict_asks_for_seeds():
    rows = losses("lora", {1e-4: [1.0], 1e-3: [1.1], 3e-3: [1.3]}) + losses("pissa", {1e-4: [1.05], 1e-3: [0.99]})
    a = analyze(rows)
    c = a["comparisons"][0]
    assert (c["a"], c["b"], c["decided"], c["low"], c["noise"]) == ("pissa", "lora", None, None, "unknown")
    assert a["ranking"][0]["note"] == "noise unknown: one seed per rung (vs lora)"
    assert "Against lora the noise is unknown" in a["verdict"]
    assert "Next: 2 more seeds at the best lr of pissa (1e-3) and lora (1e-4); " in a["verdict"]
    assert "extend the ladder of pissa above 1e-3 (try 3e-3 and 1e-2)" in a["verdict"]  # pissa's top rung


def test_verdict_asks_for_the_seeds_that_would_decide_a_close_pair():
    # a's best 1.0 vs b's 1.025, two seeds each; pooled sd ~1.7% over 15 df
    far = {1e-5: [1.5, 1.53, 1.47], 3e-5: [1.3, 1.32, 1.34]}
    rows = (losses("a", {**far, 1e-4: [0.99, 1.01]}) + losses("b", {**far, 1e-4: [1.015, 1.035]})
            + losses("c", {**far, 1e-4: [2.0, 2.03]}))
    a = analyze(rows)
    c = next(c for c in a["comparisons"] if (c["a"], c["b"]) == ("a", "b"))
    sd, df = a["noise"]["val_loss"]["sd"], a["noise"]["val_loss"]["df"]
    need = math.ceil(((1.0 * sd) ** 2 + (1.025 * sd) ** 2) / (0.025 / st.t975(df)) ** 2)
    assert c["decided"] is False and c["seeds_to_decide"] == need and 2 < need <= st.MAX_SEEDS
    assert f"Next: {need - 2} more seeds at the best lr of a (1e-4) and b (1e-4);" in a["verdict"]
    assert "It beats c beyond noise. It is within noise of b: not decided." in a["verdict"]


# --- edges and windows ---

def test_edges_are_flagged_at_both_ends_and_windows_open_there(tmp_path):
    rows = (losses("low", {1e-5: [1.0], 3e-5: [1.02], 1e-4: [1.5]})
            + losses("high", {1e-5: [1.5], 3e-5: [1.2], 1e-4: [1.0]})
            + losses("mid", {1e-5: [1.5], 3e-5: [1.0], 1e-4: [1.5]})
            + losses("short", {1e-5: [1.5], 3e-5: [1.0]}))  # never tried 1e-4: its top is 3e-5
    a = analyze(rows)
    m = a["methods"]
    assert {n: m[n]["edge"] for n in m} == {"high": "high", "low": "low", "mid": None, "short": "high"}
    assert (m["low"]["window"]["open_low"], m["low"]["window"]["open_high"]) == (True, False)
    assert (m["high"]["window"]["open_low"], m["high"]["window"]["open_high"]) == (False, True)
    assert not (m["mid"]["window"]["open_low"] or m["mid"]["window"]["open_high"])
    assert "Best lr at the ladder's edge, so the optimum may lie beyond: high (top, 1e-4), low (bottom, 1e-5)" in a["verdict"]
    assert "extend the ladder of low below 1e-5 (try 3e-6 and 1e-6)" in a["verdict"]
    assert "extend the ladder of high above 1e-4 (try 3e-4 and 1e-3)" in a["verdict"]
    md = write_report(a, rows, tmp_path, title="t")["markdown"].read_text()
    assert "| low | 1e-5 (edge: bottom) | 1.0000 (1 seed: no se) | [1e-5, 3e-5] open below | ≥0.48 |" in md
    assert "| high | 1e-4 (edge: top) | 1.0000 (1 seed: no se) | [1e-4, 1e-4] open above | ≥0.00 |" in md


def test_90_percent_window_for_accuracy_is_score_at_least_0_9_best():
    a = analyze(accuracies("a", dict(zip(LADDER, [[0.3], [0.46], [0.5], [0.44], [0.2], [0.1]])), questions=500),
                metric="accuracy", acc_tol=0.02)
    m = a["methods"]["a"]
    assert (m["window90"]["low"], m["window90"]["high"], m["window90"]["rungs"]) == (3e-5, 1e-4, 2)  # 0.44 < 0.45
    assert (m["window"]["low"], m["window"]["high"]) == (1e-4, 1e-4)  # 0.46 is 4 points below the best


def test_90_percent_window_for_loss_is_90_percent_of_the_best_improvement():
    by_lr = dict(zip(LADDER, [[1.5], [1.05], [1.0], [1.08], [1.2], [1.6]]))
    m = analyze(losses("a", by_lr, val_loss_init=2.0))["methods"]["a"]
    # best improvement 2.0 - 1.0 = 1.0: a rung is in when its loss is <= 2.0 - 0.9 = 1.1
    assert (m["window90"]["low"], m["window90"]["high"]) == (3e-5, 3e-4)
    assert (m["window"]["low"], m["window"]["high"]) == (3e-5, 1e-4)  # within 5%: <= 1.05
    assert m["window90_note"] == ""
    no_init = analyze(losses("a", by_lr))["methods"]["a"]
    assert no_init["window90"] is None and no_init["window90_note"] == "no initial val loss recorded"
    worse = analyze(losses("a", by_lr, val_loss_init=0.5))["methods"]["a"]
    assert worse["window90"] is None and worse["window90_note"] == "no improvement over the initial val loss"


def test_toy_scale_losses_read_in_scientific_notation(tmp_path):
    rows = losses("a", dict(zip(LADDER, [[0.5], [1e-20], [1e-28], [0.05]])), val_loss_init=1.0)
    a = analyze(rows)
    assert (a["methods"]["a"]["window90"]["low"], a["methods"]["a"]["window90"]["high"]) == (3e-5, 3e-4)
    assert "a is best: validation loss 1.000e-28 at lr 1e-4." in a["verdict"]
    assert a["methods"]["a"]["window"]["rungs"] == 1  # 1e-20 is not within 5% of 1e-28
    md = write_report(a, rows, tmp_path, title="t")["markdown"].read_text()
    assert "| a | 1e-4 | 1.000e-28 (1 seed: no se) |" in md and "| 0.0000 |" not in md


def test_a_window_one_seed_decides_is_named_with_the_runs_that_would_settle_it():
    # seeds 0 and 1 are flat from 3e-4 up; seed 2 dips at 1e-3 alone, so the mean's window is 1e-3
    dip = {1e-4: [1.3, 1.3, 1.3], 3e-4: [1.0, 1.001, 1.0], 1e-3: [1.0, 1.001, 0.9], 3e-3: [1.001, 1.0, 1.0]}
    calm = {1e-4: [1.3, 1.31, 1.3], 3e-4: [1.0, 1.01, 1.0], 1e-3: [1.2, 1.21, 1.2]}
    a = analyze(losses("a", dip) + losses("b", calm), loss_tol=0.01)
    ws = a["methods"]["a"]["window_seeds"]
    assert (a["methods"]["a"]["window"]["low"], a["methods"]["a"]["window"]["high"]) == (1e-3, 1e-3)
    assert (ws["without"]["2"]["low"], ws["without"]["2"]["high"]) == (3e-4, 3e-3)
    assert ws["without"]["0"]["low"] == ws["without"]["1"]["low"] == 1e-3  # seed 2 alone decides it
    assert (ws["shift"], ws["unsettled"]) == (1, [3e-4, 3e-3])
    assert a["methods"]["b"]["window_seeds"] == {"without": {s: a["methods"]["b"]["window"] for s in "012"},
                                                 "shift": 0, "unsettled": []}
    v = a["verdict"]
    assert ("One seed moves the window of a by 1 rung (without seed 2: [3e-4, 3e-3] open above, against "
            "[1e-3, 1e-3]): the seeds disagree there.") in v
    assert "2 more seeds of a at 3e-4, 1e-3 and 3e-3" in v and "window of b" not in v  # 1e-3: its best
    assert analyze(losses("a", {1e-4: [1.0], 3e-4: [0.9]}))["methods"]["a"]["window_seeds"] is None  # one seed


# --- the verdict ---

def test_verdict_with_no_usable_method():
    rows = [row("a", 1e-4, status="diverged"), row("b", 1e-3, status="failed")]
    assert analyze(rows)["verdict"].startswith("No method has a usable learning rate")


def test_verdict_names_windows_and_unsure_best_lrs():
    a = analyze(losses("a", CLOSE, val_loss_init=3.0) + losses("b", {**NOISE, 1e-4: [2.0, 2.02, 1.98]}))
    v = a["verdict"]
    assert v.startswith("a is best: validation loss 1.007 ± 0.01764 (se) at lr 1e-4.")  # 1.01 at 1e-3
    assert "Robust window (within 5% of the method's best): a ≥1.00 decades" in v  # 1e-3 is a's top rung
    assert "Best lr not pinned down: a (1e-4 to 1e-3" in v
    assert "2 more seeds of a at 1e-4 and 1e-3" in v


@pytest.mark.parametrize("x,text", [(1e-28, "1.000e-28"), (0.98, "0.98"), (123.456, "123.5"), (0, "0"),
                                    (2.5e5, "2.500e+05")])
def test_numbers_are_formatted_by_magnitude(x, text):
    assert st.number(x) == text


def test_percent():
    assert (st.percent(0), st.percent(0.2775), st.percent(0.5)) == ("0%", "27.8%", "50%")
