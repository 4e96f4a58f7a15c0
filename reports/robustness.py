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

Uncertainty (se) of a rung's score:
- val_loss: std over seeds / sqrt(n); unknown (None) with one seed.
- accuracy: sqrt(std^2 / n + mean(lm-eval stderr^2)). Every seed is scored on the same GSM8K
  items, so the test-set sampling error does not shrink with more seeds; with one seed this is
  that trial's lm-eval stderr.
Two methods adjacent in the ranking are within noise when their best scores differ by less
than 2 * sqrt(se1^2 + se2^2)."""

import json
import math
import statistics

METRICS = {"val_loss": "val_loss", "accuracy": "gsm8k_flexible"}
STATUSES = ("finished", "diverged", "failed", "stopped")
BAD = ("diverged", "failed", "stopped")
SLACK = 1e-9  # float slack: a score exactly at the tolerance (0.45 - 0.02) is inside it


def analyze(rows, *, metric="val_loss", loss_tol=0.05, acc_tol=0.02, reference_lr=None,
            target_loss=None) -> dict:
    """Per-method rungs, best lr, robust window, reference-lr score, steps to target, ranking."""
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

    methods, kept = {}, {}
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        rungs = [_rung([r for r in mine if _lr(r["lr"]) == lr], lr, METRICS[metric], lower)
                 for lr in ladder]
        methods[name] = _method([r for r, _ in rungs], lower, loss_tol, acc_tol)
        best = methods[name]["best_lr"]
        kept[name] = next((t for r, t in rungs if r["lr"] == best), [])

    reference_lr, reference_source = _reference(methods, reference_lr)
    target_loss, target_source = _target(methods, target_loss)
    for name, m in methods.items():
        m["score_at_reference"] = next(
            (r["score"] for r in m["rungs"] if r["lr"] == reference_lr), None)
        m["steps_to_target"], m["target_reached"] = _steps(kept[name], target_loss)
        m["best_curve"] = _curve(kept[name])
    return {
        "metric": metric,
        "score_name": "validation loss" if lower else "GSM8K accuracy (flexible-extract)",
        "lower_is_better": lower, "loss_tol": loss_tol, "acc_tol": acc_tol, "ladder": ladder,
        "reference_lr": reference_lr, "reference_source": reference_source,
        "target_loss": target_loss, "target_source": target_source,
        "methods": methods, "ranking": _ranking(methods, lower),
    }


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
    losses = [v for t in done if (v := _num(t.get("val_loss"))) is not None]
    strict, strict_se = _accuracy(done, "gsm8k_strict")
    flexible, flexible_se = _accuracy(done, "gsm8k_flexible")
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
    }, done


def _accuracy(trials, name):
    """Mean and se over seeds of an lm-eval accuracy (see the module docstring)."""
    pairs = [(v, _num(t.get(f"{name}_stderr"))) for t in trials if (v := _num(t.get(name))) is not None]
    if not pairs:
        return None, None
    values = [v for v, _ in pairs]
    errors = [e for _, e in pairs if e is not None]
    mean = statistics.fmean(values)
    if len(values) == 1 and not errors:
        return mean, None
    seed_var = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
    eval_var = statistics.fmean(e * e for e in errors) if errors else 0.0
    return mean, math.sqrt(seed_var + eval_var)


def _method(rungs, lower, loss_tol, acc_tol):
    """Best lr and the contiguous window of ok rungs around it within tolerance of the best."""
    totals = {k: sum(r[k] for r in rungs) for k in ("trials", *BAD)}
    ok = [i for i, r in enumerate(rungs) if r["status"] == "ok"]
    if not ok:
        return {"rungs": rungs, "best_lr": None, "best_score": None, "best_se": None,
                "best_hparams": None, "best_val_loss": None, "window": None, **totals}
    order = _order(lower)
    b = min(ok, key=lambda i: order(rungs[i]["score"]))  # ties: the lowest lr
    best = rungs[b]["score"]

    def inside(r):
        if r["status"] != "ok":
            return False
        return r["score"] <= best * (1 + loss_tol) + SLACK if lower else r["score"] >= best - acc_tol - SLACK

    lo = hi = b
    while lo > 0 and inside(rungs[lo - 1]):
        lo -= 1
    while hi < len(rungs) - 1 and inside(rungs[hi + 1]):
        hi += 1
    low, high = rungs[lo]["lr"], rungs[hi]["lr"]
    return {"rungs": rungs, "best_lr": rungs[b]["lr"], "best_score": best, "best_se": rungs[b]["se"],
            "best_hparams": rungs[b]["hparams"], "best_val_loss": rungs[b]["val_loss"],
            "window": {"low": low, "high": high, "rungs": hi - lo + 1, "decades": math.log10(high / low)},
            **totals}


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
    lora = methods.get("lora", {}).get("best_val_loss")
    if lora is not None:
        return lora, "lora's final val loss at its best lr"
    losses = [m["best_val_loss"] for m in methods.values() if m["best_val_loss"] is not None]
    if not losses:
        return None, "no val loss to target"
    # the worst method's final loss: every method reached it, so the steps compare speed only
    return max(losses), "no lora val loss: the highest final val loss of any method at its best lr"


def _steps(trials, target):
    """Mean over the seeds that got there of the first step with val_loss <= target, and
    [seeds that got there, seeds]."""
    if target is None:
        return None, [0, len(trials)]
    firsts = []
    for t in trials:
        hits = [s for s, v in sorted(t.get("history") or []) if _num(v) is not None and v <= target + SLACK]
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


def _ranking(methods, lower):
    order = _order(lower)
    ranked = sorted((n for n in methods if methods[n]["best_score"] is not None),
                    key=lambda n: order(methods[n]["best_score"]))  # stable: ties keep method order
    out = []
    for i, name in enumerate(ranked):
        m = methods[name]
        entry = {"rank": i + 1, "method": name, "best_score": m["best_score"], "best_se": m["best_se"],
                 "best_lr": m["best_lr"], "tied_with_next": False, "note": ""}
        if i + 1 < len(ranked):
            nxt = methods[ranked[i + 1]]
            if m["best_se"] is None or nxt["best_se"] is None:
                why = "single seed" if lower else "no stderr"
                entry["note"] = f"{why}: noise unknown (vs {ranked[i + 1]})"
            else:
                gap = abs(m["best_score"] - nxt["best_score"])
                noise = 2 * math.hypot(m["best_se"], nxt["best_se"])
                entry["tied_with_next"] = gap < noise
                entry["note"] = (f"within noise of {ranked[i + 1]}" if gap < noise
                                 else f"ahead of {ranked[i + 1]}") + f" (gap {gap:.3g}, 2σ {noise:.3g})"
        out.append(entry)
    for name in methods:
        if methods[name]["best_score"] is None:
            out.append({"rank": None, "method": name, "best_score": None, "best_se": None, "best_lr": None,
                        "tied_with_next": False, "note": "no usable lr: every rung diverged, failed or is missing"})
    return out
