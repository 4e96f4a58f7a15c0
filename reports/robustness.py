"""Learning-rate robustness of each method, from a sweep's trial rows (pure: no MLflow, no Ray).

The ladder is the sorted union of every row's lr; a rung is one method at one lr. At a rung the
seeds of each hyperparameter combination are pooled and the best combination is kept (a clean
one before one where some seed diverged). Only finished trials are scored: a scheduler-stopped
trial ended early, so its loss is not comparable. A rung's status:
- ok: the kept combination has a score and no diverged seed;
- unstable: it has a score from its surviving seeds, but some seed diverged;
- diverged / failed / stopped: no score, and that is why (the first that applies);
- missing: no scored trial at all (not run, or run without the metric).
Only ok rungs can be a method's best lr or lie in its robust window: an lr where some seed
diverges is not a safe choice. Failed seeds (crashes) only lower n.

Uncertainty (se) of a rung's score, as a mean over seeds (reports.statistics has the intervals,
the best-lr bootstrap, the pairwise tests and the verdict built on these rungs):
- val_loss: std over seeds / sqrt(n); unknown (None) with one seed.
- accuracy: sqrt(std^2 / n + mean(lm-eval stderr^2)). Every seed is scored on the same GSM8K
  items, so the test-set sampling error does not shrink with more seeds; with one seed this is
  that trial's lm-eval stderr.
Two methods adjacent in the ranking are within noise when the 95% interval of their difference
(reports.statistics.compare) contains 0.

Windows, both contiguous ok rungs around the best lr:
- window: score within tolerance of the best (loss within loss_tol relative, accuracy within
  acc_tol points);
- window90 (as arXiv 2602.04998): score reaching 90% of the best. Accuracy: score >= 0.9 * best.
  Loss, lower is better: the improvement over the initial val loss (val_loss_init, at the best
  rung) reaches 90% of the best improvement, i.e. loss <= init - 0.9 * (init - best).
A side is open (open_low / open_high) where the window reaches the lowest / highest lr the method
tried: it may extend beyond. A best lr at either end is flagged (edge: "low", "high" or "both").
window_seeds, a jackknife over seeds: the window again with each seed left out (a rung with one
seed keeps it). The seed noise can differ from rung to rung (one seed dipping where the others
are flat), which no pooled interval shows; a window that one seed moves is not settled, and the
lrs it moves over are where more seeds decide it."""

import json
import math
import statistics

from reports import statistics as stats

METRICS = {"val_loss": "val_loss", "accuracy": "gsm8k_flexible"}
STATUSES = ("finished", "diverged", "failed", "stopped")
BAD = ("diverged", "failed", "stopped")
LOSS_TOL = 0.05  # the default robust window: val loss within 5% of the best
SLACK = 1e-9  # float slack: a score exactly at the tolerance (0.45 - 0.02) is inside it


def at_most(value, limit) -> bool:
    """value <= limit up to float slack relative to limit: a loss spans 1e-28 to 1 on toy tasks,
    so an absolute slack would put every tiny loss inside any loss window."""
    return value <= limit + SLACK * abs(limit)


def analyze(rows, *, metric="val_loss", loss_tol=LOSS_TOL, acc_tol=0.02, reference_lr=None,
            target_loss=None, resamples=1000, bootstrap_seed=0, loss_name="validation loss",
            setting=None) -> dict:
    """Per-method rungs, best lr and its interval, robust windows, reference-lr score, steps to
    target, pairwise differences, ranking and a verdict in words. loss_name: what the task's
    val_loss measures (a toy task's risk); setting: what the sweep ran (task, model, budget, ...),
    shown at the top of the report, to which the seeds and trials counted here are added."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if not rows:
        raise ValueError("no trial rows to analyze")
    for r in rows:
        if r["status"] not in STATUSES:
            raise ValueError(f"trial status must be one of {STATUSES}, got {r['status']!r}")
    lower = metric == "val_loss"
    ladder = sorted({_lr(r["lr"]) for r in rows})
    names = sorted({r["method"] for r in rows}, key=lambda m: (m != "lora", m))  # baseline first

    key = METRICS[metric]
    scored = {}
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        scored[name] = [_rung([r for r in mine if _lr(r["lr"]) == lr], lr, key, lower) for lr in ladder]
    every = [r for rungs in scored.values() for r, _ in rungs]
    noise = {k: stats.seed_noise(every, k) for k in ("val_loss", "gsm8k_strict", "gsm8k_flexible")}
    for r in every:
        _intervals(r, key, noise)

    methods, kept = {}, {}
    for name, rungs in scored.items():
        methods[name] = _method([r for r, _ in rungs], lower, loss_tol, acc_tol)
        methods[name]["best_lr_ci"] = stats.best_lr_interval(
            methods[name]["rungs"], key, noise[key], resamples=resamples, seed=bootstrap_seed, name=name)
        best = methods[name]["best_lr"]
        kept[name] = next((t for r, t in rungs if r["lr"] == best), [])

    for name in names:
        methods[name]["window_seeds"] = _window_seeds([r for r in rows if r["method"] == name], ladder,
                                                      methods[name], key, lower, loss_tol, acc_tol)
    reference_lr, reference_source = _reference(methods, reference_lr)
    target_loss, target_source = _target(methods, target_loss)
    for name, m in methods.items():
        m["score_at_reference"] = next(
            (r["score"] for r in m["rungs"] if r["lr"] == reference_lr), None)
        m["steps_to_target"], m["target_reached"] = _steps(kept[name], target_loss)
        m["best_curve"] = _curve(kept[name])
        m["grad_norm_curve"] = mean_curve(t.get("grad_norm") or [] for t in kept[name])
    comparisons = _comparisons(methods, key, noise[key])
    analysis = {
        "metric": metric,
        "score_name": loss_name if lower else "GSM8K accuracy (flexible-extract)", "loss_name": loss_name,
        "setting": {**(setting or {}), "trials": len(rows), "seeds": len({r.get("seed") for r in rows})},
        "lower_is_better": lower, "loss_tol": loss_tol, "acc_tol": acc_tol, "ladder": ladder,
        "reference_lr": reference_lr, "reference_source": reference_source,
        "target_loss": target_loss, "target_source": target_source,
        "noise": noise, "bootstrap": {"resamples": resamples, "seed": bootstrap_seed},
        "methods": methods, "comparisons": comparisons, "ranking": _ranking(methods, lower, comparisons),
    }
    analysis["verdict"] = stats.verdict(analysis)
    return analysis


def _lr(x) -> float:
    # 6 significant digits: the same rung read back from text or arithmetic is one rung
    return float(f"{float(x):.6g}")


def _num(x):
    """A finite float, or None (NaN and inf from a broken run carry no information)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _order(lower):
    """Sort key putting the better score first."""
    return (lambda s: s) if lower else (lambda s: -s)


def _rung(trials, lr, key, lower):
    """One method at one lr: (stats of its best hyperparameter combination, that combo's scored
    trials). Status counts are over every trial at this lr, all combinations."""
    combos = {}
    for t in trials:
        combos.setdefault(json.dumps(t.get("hparams") or {}, sort_keys=True, default=str), []).append(t)
    counts = {k: sum(t["status"] == k for t in trials) for k in BAD}
    head = {"lr": lr, "trials": len(trials), "combos": len(combos), **counts}
    scored = [(ts, *_pool(ts, key)) for ts in combos.values()]
    scored = [p for p in scored if p[1]["score"] is not None]
    if not scored:
        status = next((k for k in BAD if counts[k]), "missing")
        return {**head, "status": status, **_pool([], key)[0]}, []

    def diverged(ts):
        return any(t["status"] == "diverged" for t in ts)

    order = _order(lower)
    ts, stats, done = min(scored, key=lambda p: (diverged(p[0]), order(p[1]["score"])))
    return {**head, "status": "unstable" if diverged(ts) else "ok", **stats}, done


def _pool(trials, key):
    """Seeds of one combination -> (stats, the finished trials scored on key)."""
    done = [t for t in trials if t["status"] == "finished" and _num(t.get(key)) is not None]
    values = {k: [v for t in done if (v := _num(t.get(k))) is not None]
              for k in ("val_loss", "gsm8k_strict", "gsm8k_flexible")}
    losses = values["val_loss"]
    counts = [int(v) for t in done if (v := _num(t.get("gsm8k_n")))]
    questions = min(counts) if counts else None  # seeds share the first n questions: the fewest
    inits = [v for t in done if (v := _num(t.get("val_loss_init"))) is not None]
    strict, strict_se, strict_eval = _accuracy(done, "gsm8k_strict")
    flexible, flexible_se, flexible_eval = _accuracy(done, "gsm8k_flexible")
    mean = statistics.fmean(losses) if losses else None
    spread = statistics.stdev(losses) if len(losses) > 1 else None
    if key == "val_loss":
        score, se = mean, None if spread is None else spread / math.sqrt(len(losses))
    else:
        score, se = flexible, flexible_se
    return {
        "hparams": (trials[0].get("hparams") or {}) if done else None,
        "n": len(done), "score": score, "se": se,
        "val_loss": mean, "val_loss_std": spread,
        "gsm8k_strict": strict, "gsm8k_strict_se": strict_se,
        "gsm8k_flexible": flexible, "gsm8k_flexible_se": flexible_se,
        "seed_values": values, "questions": questions,
        "question_se": {"gsm8k_strict": stats.question_se(strict, questions, strict_eval),
                        "gsm8k_flexible": stats.question_se(flexible, questions, flexible_eval)},
        "val_loss_init": statistics.fmean(inits) if inits else None,
    }, done


def _accuracy(trials, name):
    """Mean and se over seeds of an lm-eval accuracy (see the module docstring), and lm-eval's
    stderr alone (rms over seeds)."""
    pairs = [(v, _num(t.get(f"{name}_stderr"))) for t in trials if (v := _num(t.get(name))) is not None]
    if not pairs:
        return None, None, None
    values = [v for v, _ in pairs]
    errors = [e for _, e in pairs if e is not None]
    mean = statistics.fmean(values)
    eval_var = statistics.fmean(e * e for e in errors) if errors else None
    if len(values) == 1 and not errors:
        return mean, None, None
    seed_var = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
    return mean, math.sqrt(seed_var + (eval_var or 0.0)), None if eval_var is None else math.sqrt(eval_var)


def _intervals(rung, key, noise):
    """95% intervals of a rung's accuracies (questions and pooled seed noise); ci: the score's
    (accuracy only: a loss is shown as mean +- spread)."""
    for k in ("gsm8k_strict", "gsm8k_flexible"):
        p, seeds = rung[k], len(rung["seed_values"][k])
        rung[f"{k}_ci"] = stats.accuracy_interval(
            p, rung["questions"], seed_se=stats.seed_se(p, seeds, noise[k]),
            t=stats.t975(noise[k] and noise[k]["df"]), stderr=rung["question_se"][k])
    rung["ci"] = None if key == "val_loss" else rung[f"{key}_ci"]


def _method(rungs, lower, loss_tol, acc_tol):
    """Best lr and the contiguous window of ok rungs around it within tolerance of the best."""
    totals = {k: sum(r[k] for r in rungs) for k in ("trials", *BAD)}
    ok = [i for i, r in enumerate(rungs) if r["status"] == "ok"]
    if not ok:
        return {"rungs": rungs, "best_lr": None, "best_score": None, "best_se": None, "best_ci": None,
                "best_n": 0, "best_hparams": None, "best_val_loss": None, "edge": None,
                "window": None, "window90": None, "window90_note": "no usable lr", **totals}
    order = _order(lower)
    b = min(ok, key=lambda i: order(rungs[i]["score"]))  # ties: the lowest lr
    best = rungs[b]["score"]
    tried = [i for i, r in enumerate(rungs) if r["trials"]]
    edge = {(True, True): "both", (True, False): "low", (False, True): "high"}.get((b == tried[0], b == tried[-1]))

    def within(score):
        return at_most(score, best * (1 + loss_tol)) if lower else score >= best - acc_tol - SLACK

    threshold, note = _reach90(rungs[b], lower)
    return {"rungs": rungs, "best_lr": rungs[b]["lr"], "best_score": best, "best_se": rungs[b]["se"],
            "best_ci": rungs[b]["ci"], "best_n": rungs[b]["n"],
            "best_hparams": rungs[b]["hparams"], "best_val_loss": rungs[b]["val_loss"], "edge": edge,
            "window": _window(rungs, b, tried, within),
            "window90": None if threshold is None else _window(
                rungs, b, tried, lambda s: at_most(s, threshold) if lower else s >= threshold - SLACK),
            "window90_note": note, **totals}


def _reach90(best, lower):
    """(score threshold of the 90% window, '' or why there is none); see the module docstring."""
    if not lower:
        return 0.9 * best["score"], ""
    init = best["val_loss_init"]
    if init is None:
        return None, "no initial val loss recorded"
    if init <= best["score"]:
        return None, "no improvement over the initial val loss"
    return init - 0.9 * (init - best["score"]), ""


def _window(rungs, b, tried, inside):
    """The contiguous ok rungs around b whose score is inside; open on a side where it reaches
    the lowest / highest lr tried. Rungs the method never tried are stepped over (an adaptive
    search tries a rung where it decides something: another method's rungs are not gaps)."""
    def ok(i):
        return rungs[tried[i]]["status"] == "ok" and inside(rungs[tried[i]]["score"])

    lo = hi = tried.index(b)
    while lo > 0 and ok(lo - 1):
        lo -= 1
    while hi < len(tried) - 1 and ok(hi + 1):
        hi += 1
    low, high = rungs[tried[lo]]["lr"], rungs[tried[hi]]["lr"]
    return {"low": low, "high": high, "rungs": hi - lo + 1, "decades": math.log10(high / low),
            "open_low": lo == 0, "open_high": hi == len(tried) - 1}


def _window_seeds(trials, ladder, m, key, lower, loss_tol, acc_tol):
    """How far one seed moves the window (a jackknife over seeds): the window with each seed left
    out, where a rung keeps another scored seed (a one-seed rung keeps its seed). {"without":
    {seed: window}, "shift": the farthest an edge moves (ladder rungs), "unsettled": the lrs
    tried that some of these windows hold and others do not}; None without a rung of >= 2 seeds."""
    by_lr = {lr: [t for t in trials if _lr(t["lr"]) == lr] for lr in ladder}
    if m["window"] is None or not any(r["n"] > 1 for r in m["rungs"] if r["status"] == "ok"):
        return None

    def without(seed):
        rungs = []
        for lr, here in by_lr.items():
            kept = [t for t in here if t.get("seed") != seed]
            rung = _rung(kept if any(t["status"] == "finished" for t in kept) else here, lr, key, lower)[0]
            rungs.append({**rung, "ci": None})  # a window needs no interval
        return _method(rungs, lower, loss_tol, acc_tol)["window"]

    windows = {str(seed): without(seed) for seed in sorted({t.get("seed") for t in trials}, key=str)}  # JSON keys
    every = [m["window"], *windows.values()]
    tried = [lr for lr, here in by_lr.items() if here]
    held = [[w is not None and w["low"] <= lr <= w["high"] for w in every] for lr in tried]
    index = ladder.index
    shift = max((max(abs(index(w["low"]) - index(m["window"]["low"])),
                     abs(index(w["high"]) - index(m["window"]["high"])))
                 for w in windows.values() if w), default=0)
    return {"without": windows, "shift": shift, "unsettled": [lr for lr, h in zip(tried, held) if len(set(h)) > 1]}


def _reference(methods, given):
    if given is not None:
        return _lr(given), "given"
    if methods.get("lora", {}).get("best_lr") is not None:
        return methods["lora"]["best_lr"], "lora's best lr"
    bests = [m["best_lr"] for m in methods.values() if m["best_lr"] is not None]
    if not bests:
        return None, "no method has a usable lr"
    lr = max(sorted(set(bests)), key=bests.count)  # ties: the lowest lr
    return lr, f"no lora: the best lr of the most methods ({bests.count(lr)} of {len(methods)}; ties: lowest lr)"


def _target(methods, given):
    if given is not None:
        return given, "given"
    losses = [m["best_val_loss"] for m in methods.values() if m["best_val_loss"] is not None]
    if not losses:
        return None, "no val loss to target"
    # the worst method's final loss: every method reached it, so the steps compare speed only
    return max(losses), "the highest final val loss of any method at its best lr: every method reaches it"


def _steps(trials, target):
    """Mean over the seeds that got there of the first step with val_loss <= target, and
    [seeds that got there, seeds]."""
    if target is None:
        return None, [0, len(trials)]
    firsts = []
    for t in trials:
        hits = [s for s, v in sorted(t.get("history") or []) if _num(v) is not None and at_most(v, target)]
        if hits:
            firsts.append(hits[0])
    return (statistics.fmean(firsts) if firsts else None), [len(firsts), len(trials)]


def _curve(trials):
    """[step, val_loss mean over the seeds that logged that step]."""
    return mean_curve(t.get("history") or [] for t in trials)


def mean_curve(histories) -> list:
    """[step, mean of the finite values logged at that step] over several [(step, value)] histories."""
    by_step = {}
    for history in histories:
        for s, v in history:
            if _num(v) is not None:
                by_step.setdefault(s, []).append(v)
    return [[s, statistics.fmean(vs)] for s, vs in sorted(by_step.items())]


def _ranked(methods, lower):
    order = _order(lower)
    return sorted((n for n in methods if methods[n]["best_score"] is not None),
                  key=lambda n: order(methods[n]["best_score"]))  # stable: ties keep method order


def _best_rung(m):
    return next(r for r in m["rungs"] if r["lr"] == m["best_lr"])


def _comparisons(methods, key, noise):
    """Every pair of usable methods at their own best lr, the better-ranked one as a."""
    ranked = _ranked(methods, key == "val_loss")
    return [stats.compare(a, _best_rung(methods[a]), b, _best_rung(methods[b]), key, noise)
            for i, a in enumerate(ranked) for b in ranked[i + 1:]]


def _ranking(methods, lower, comparisons):
    ranked = _ranked(methods, lower)
    out = []
    for i, name in enumerate(ranked):
        m = methods[name]
        entry = {"rank": i + 1, "method": name, "best_score": m["best_score"], "best_se": m["best_se"],
                 "best_lr": m["best_lr"], "tied_with_next": False, "note": ""}
        if i + 1 < len(ranked):
            nxt = ranked[i + 1]
            c = next(c for c in comparisons if (c["a"], c["b"]) == (name, nxt))
            if c["decided"] is None:
                entry["note"] = f"{c['note']} (vs {nxt})"
            else:
                entry["tied_with_next"] = not c["decided"]
                entry["note"] = (f"ahead of {nxt}" if c["decided"] else f"within noise of {nxt}") + (
                    f" (difference {stats.number(c['diff'], 3)}, 95% CI {stats.number(c['low'], 3)}"
                    f" to {stats.number(c['high'], 3)}; noise: {c['noise']})")
        out.append(entry)
    for name in methods:
        if methods[name]["best_score"] is None:
            out.append({"rank": None, "method": name, "best_score": None, "best_se": None, "best_lr": None,
                        "tied_with_next": False, "note": "no usable lr: every rung diverged, failed or is missing"})
    return out
