"""How sure a sweep's verdict is: intervals and tests on the rungs of reports.robustness (pure).

Noise has two sources, and every number here says which ones it counts:
- seeds: training a method at one lr with another seed gives another score. The spread is pooled
  over every ok rung of the sweep (all methods) with two or more scored seeds, per metric; the
  seed noise is assumed alike at every rung, so a one-seed rung borrows it, and the pooled
  estimate has more degrees of freedom (df) than any rung's 2-3 seeds. Validation loss is pooled
  on a log scale (relative noise: a toy task's losses span 1e-28 to 1), accuracy on its own scale.
  Where no rung has two seeds, the seed noise is unknown.
- questions (accuracy only): GSM8K scores n questions, a sample of all the questions one could
  ask; an accuracy p has the binomial standard error sqrt(p(1-p)/n). Every seed is scored on the
  same questions, so this error does not shrink with more seeds. Without n (older runs) lm-eval's
  stderr stands in for it.

Accuracy interval of a rung (95%): a Wilson score interval on the mean over seeds of the correct
counts (mean accuracy times n), each side widened in quadrature by t * sigma / sqrt(seeds), sigma
being the pooled seed spread and t Student's 97.5% quantile at its df.

Best lr interval: a seeded bootstrap. Each resample redraws every ok rung's score (its own seeds
resampled with replacement; a one-seed rung: its score plus the pooled seed noise; accuracy adds
the question noise, as if each rung had its own questions, which is conservative) and notes the
best rung. The interval spans the rungs best in at least 5% of resamples. The hyperparameters
kept at each rung are held fixed.

Pairwise difference of two methods at their own best lr: the difference of their scores
+- t * sqrt(seed variance of both means + question variance of both). Decided when the 95%
interval excludes 0; unknown when no noise can be estimated (one seed per rung, loss metric)."""

import math
import random
import statistics
from collections import Counter

from reports.plots import lr_label, number, tolerance

Z = 1.959964  # normal 97.5% quantile
# Student's t 97.5% quantiles; between rows the smaller df's (wider) value is used
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
LIKELY = 0.05   # a rung best in at least this share of resamples is in the best-lr interval
MORE_SEEDS = 2  # seeds to add where the noise is unknown or the best lr is unsure
MAX_SEEDS = 10  # beyond this many seeds per method, a gap is called a practical tie


def t975(df) -> float:
    """Two-sided 95% quantile of Student's t with df degrees of freedom (None: normal)."""
    if df is None or df > max(T975):
        return Z
    return T975[max(k for k in T975 if k <= df)]


def wilson(k, n, z=Z) -> tuple:
    """Wilson score interval of k successes out of n (k may be a mean count, not an integer)."""
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def question_se(p, questions, stderr=None):
    """Standard error of an accuracy from the question sample: binomial with n, else lm-eval's."""
    if p is None:
        return None
    if questions:
        return math.sqrt(p * (1 - p) / questions)
    return stderr


def accuracy_interval(p, questions, *, seed_se=None, t=Z, stderr=None):
    """95% interval [low, high] of a mean accuracy p over seeds scored on the same `questions`:
    Wilson on the mean count (or p +- 1.96 * lm-eval stderr without a count), each side widened
    by t * seed_se in quadrature. None when neither source of noise is known."""
    if p is None:
        return None
    if questions:
        low, high = wilson(p * questions, questions)
    elif stderr is not None:
        low, high = p - Z * stderr, p + Z * stderr
    elif seed_se is not None:
        low = high = p
    else:
        return None
    if seed_se:
        low, high = p - math.hypot(p - low, t * seed_se), p + math.hypot(high - p, t * seed_se)
    return [max(0.0, low), min(1.0, high)]


def seed_noise(rungs, key):
    """Seed spread of metric `key` pooled over ok rungs with >= 2 seeds:
    {"sd", "df", "rungs", "scale"} (scale "log" for loss), or None where no rung has two seeds."""
    lower = key == "val_loss"
    squares, df, count = 0.0, 0, 0
    for r in rungs:
        values = r["seed_values"].get(key) or []
        if r["status"] != "ok" or len(values) < 2 or (lower and min(values) <= 0):
            continue
        if lower:
            values = [math.log(v) for v in values]
        squares += statistics.variance(values) * (len(values) - 1)
        df += len(values) - 1
        count += 1
    if not df:
        return None
    return {"sd": math.sqrt(squares / df), "df": df, "rungs": count, "scale": "log" if lower else "absolute"}


def seed_se(score, seeds, noise):
    """Standard error of a mean over `seeds` seeds from the pooled seed noise (None: unknown)."""
    if noise is None or score is None or not seeds:
        return None
    sd = noise["sd"] * abs(score) if noise["scale"] == "log" else noise["sd"]  # log scale: relative
    return sd / math.sqrt(seeds)


def best_lr_interval(rungs, key, noise, *, resamples=1000, seed=0, name=""):
    """Bootstrap of a method's best lr over its ok rungs (see the module docstring):
    {"low", "high", "modal_lr", "modal_share", "shares": [[lr, share]], "resamples", "note"}."""
    ok = [r for r in rungs if r["status"] == "ok"]
    if not ok:
        return None
    lower = key == "val_loss"
    draws = [_sampler(r, key, noise) for r in ok]
    if None in draws:
        return {"low": None, "high": None, "modal_lr": None, "modal_share": None, "shares": [],
                "resamples": 0, "note": "unknown: one seed per rung and no noise estimate"}
    rng = random.Random(f"{seed}/{name}")  # str seeds are stable across processes
    pick = min if lower else max
    counts = Counter()
    for _ in range(resamples):
        scores = [draw(rng) for draw in draws]
        counts[ok[pick(range(len(ok)), key=scores.__getitem__)]["lr"]] += 1  # ties: lowest lr
    shares = [[r["lr"], counts[r["lr"]] / resamples] for r in ok]
    modal_lr, modal_share = max(shares, key=lambda s: s[1])  # ties: lowest lr
    likely = [lr for lr, s in shares if s >= LIKELY or lr == modal_lr]
    return {"low": min(likely), "high": max(likely), "modal_lr": modal_lr, "modal_share": modal_share,
            "shares": shares, "resamples": resamples, "note": ""}


def _sampler(rung, key, noise):
    """A function rng -> one bootstrap draw of the rung's score, or None if its noise is unknown."""
    lower = key == "val_loss"
    values = rung["seed_values"][key]
    qse = None if lower else rung["question_se"][key]
    if len(values) >= 2:
        def seeds(rng):
            return statistics.fmean(rng.choices(values, k=len(values)))
    elif noise is not None:
        v, sd = values[0], noise["sd"]
        def seeds(rng):
            return v * math.exp(rng.gauss(0, sd)) if lower else v + rng.gauss(0, sd)
    elif qse is not None:
        def seeds(rng):
            return values[0]
    else:
        return None
    if not qse:
        return seeds
    return lambda rng: seeds(rng) + rng.gauss(0, qse)


def compare(name_a, a, name_b, b, key, noise) -> dict:
    """Difference a - b of two methods' best rungs with its 95% interval; decided when it excludes
    0 (None: noise unknown). seeds_to_decide: seeds per method that would make the present gap
    decided at the present noise (None: more seeds cannot, or noise unknown)."""
    lower = key == "val_loss"
    diff = a["score"] - b["score"]
    out = {"a": name_a, "b": name_b, "diff": diff, "low": None, "high": None, "decided": None,
           "noise": "unknown", "seeds_to_decide": None}
    seed_var = question_var = None
    if noise is not None:
        seed_var = seed_se(a["score"], a["n"], noise) ** 2 + seed_se(b["score"], b["n"], noise) ** 2
    qa, qb = (None, None) if lower else (a["question_se"][key], b["question_se"][key])
    if qa is not None and qb is not None:
        question_var = qa * qa + qb * qb
    if seed_var is None and question_var is None:
        out["note"] = "noise unknown: one seed per rung" + ("" if lower else " and no question count")
        return out
    t = t975(noise["df"]) if noise else Z
    half = t * math.sqrt((seed_var or 0.0) + (question_var or 0.0))
    decided = abs(diff) > half
    parts = [p for p, v in (("seeds", seed_var), ("questions", question_var)) if v is not None]
    out.update(low=diff - half, high=diff + half, decided=decided, noise=" + ".join(parts))
    out["note"] = "" if seed_var is not None else "seed noise unknown (one seed per rung): questions only"
    if not decided and seed_var is not None:
        # seed variance scales as 1/seeds: find the seeds per method that bring half under the gap
        room = (diff / t) ** 2 - (question_var or 0.0)
        per_seed = seed_se(a["score"], 1, noise) ** 2 + seed_se(b["score"], 1, noise) ** 2
        if room > 0:
            out["seeds_to_decide"] = max(math.ceil(per_seed / room), max(a["n"], b["n"]) + 1)
    return out


def compare_sweeps(a, noise_a, b, noise_b, key) -> dict:
    """Difference a - b of two rungs from two sweeps (one method's best rung on two nights), each
    sweep with its own pooled seed noise; a sweep without one borrows the other's (same code, same
    suite: alike noise). Seed degrees of freedom: Welch-Satterthwaite. Decided when the 95%
    interval excludes 0 (None: no noise known, one seed per rung on a loss metric)."""
    lower = key == "val_loss"
    noise_a, noise_b = noise_a or noise_b, noise_b or noise_a
    diff = a["score"] - b["score"]
    out = {"diff": diff, "low": None, "high": None, "decided": None, "noise": "unknown"}
    variances, t = {}, Z
    if noise_a is not None:
        va, vb = seed_se(a["score"], a["n"], noise_a) ** 2, seed_se(b["score"], b["n"], noise_b) ** 2
        variances["seeds"] = va + vb
        if noise_a is noise_b:  # one estimate for both
            t = t975(noise_a["df"])
        elif va + vb:
            t = t975((va + vb) ** 2 / (va * va / noise_a["df"] + vb * vb / noise_b["df"]))
    qa, qb = (None, None) if lower else (a["question_se"][key], b["question_se"][key])
    if qa is not None and qb is not None:
        variances["questions"] = qa * qa + qb * qb
    if not variances:
        return out
    half = t * math.sqrt(sum(variances.values()))
    out.update(low=diff - half, high=diff + half, decided=abs(diff) > half, noise=" + ".join(variances))
    return out


def percent(p) -> str:
    """0.2775 -> '27.8%', 0 -> '0%'."""
    return "—" if p is None else f"{100 * p:.1f}".removesuffix(".0") + "%"


def score_text(analysis, score) -> str:
    return percent(score) if not analysis["lower_is_better"] else number(score)


def _error(a, m) -> str:
    """' (95% CI 6–51%)' or ' ± 0.01 (se)' of a method's best score; '' where unknown (the
    verdict then says the noise is unknown)."""
    if m["best_ci"]:
        return f" (95% CI {percent(m['best_ci'][0]).removesuffix('%')}–{percent(m['best_ci'][1])})"
    if m["best_se"] is not None:
        return f" ± {score_text(a, m['best_se'])} (se)"
    return ""


def window_text(w) -> str:
    """'[1e-4, 3e-3] open above': a side is open where the window reaches the end of the lrs tried."""
    if w is None:
        return "none"
    side = {(True, True): " open both sides", (True, False): " open below", (False, True): " open above"}
    return f"[{lr_label(w['low'])}, {lr_label(w['high'])}]" + side.get((w["open_low"], w["open_high"]), "")


def decades_text(w) -> str:
    """Width in decades, '≥' where the window is open (it may be wider)."""
    if w is None:
        return "—"
    if w["rungs"] == 1:
        return "one rung" + (" (open)" if w["open_low"] or w["open_high"] else "")
    return ("≥" if w["open_low"] or w["open_high"] else "") + f"{w['decades']:.2f} decades"


def verdict(a) -> str:
    """The analysis in a few short sentences: who wins, how sure, what to run next."""
    ranked = [r["method"] for r in a["ranking"] if r["rank"] is not None]
    if not ranked:
        return ("No method has a usable learning rate: every rung diverged, failed or is missing. "
                "Next: a lower learning-rate ladder.")
    methods, lead = a["methods"], ranked[0]
    m = methods[lead]
    what = a.get("loss_name", "val loss") if a["lower_is_better"] else "accuracy"
    out = [f"{lead} is best: {what} {score_text(a, m['best_score'])}{_error(a, m)} at lr {lr_label(m['best_lr'])}."]
    vs = [c for c in a["comparisons"] if c["a"] == lead]
    ahead = [c["b"] for c in vs if c["decided"]]
    tied = [c for c in vs if c["decided"] is False]
    unknown = [c["b"] for c in vs if c["decided"] is None]
    if len(ranked) == 1:
        out.append("No other method has a usable learning rate.")
    elif len(ahead) == len(vs):
        out.append("It beats every other method beyond noise: decided.")
    else:
        if ahead:
            out.append(f"It beats {_names(ahead)} beyond noise.")
        if tied:
            out.append(f"It is within noise of {_names([c['b'] for c in tied])}: not decided.")
        if unknown:
            out.append(f"Against {_names(unknown)} the noise is unknown: one seed per rung.")
    edges = [f"{n} ({'bottom' if m['edge'] == 'low' else 'top' if m['edge'] == 'high' else 'only rung'}, "
             f"{lr_label(m['best_lr'])})" for n, m in methods.items() if m.get("edge")]
    if edges:
        out.append(f"Best lr at the ladder's edge, so the optimum may lie beyond: {', '.join(edges)}.")
    usable = [n for n in methods if methods[n]["window"]]
    out.append(f"Robust window ({tolerance(a)}): "
               + ", ".join(f"{n} {decades_text(methods[n]['window'])}" for n in usable) + ".")
    reach = [n for n in usable if methods[n]["window90"]]
    if reach:
        out.append(f"Reaching 90% of the best {'improvement' if a['lower_is_better'] else 'score'}: "
                   + ", ".join(f"{n} {decades_text(methods[n]['window90'])}" for n in reach) + ".")
    moved = [n for n in usable if (methods[n].get("window_seeds") or {}).get("unsettled")]
    if moved:
        out.append("One seed moves the window of " + ", ".join(_moved(n, methods[n]) for n in moved)
                   + ": the seeds disagree there.")
    unsure = [n for n in ranked if (ci := methods[n]["best_lr_ci"]) and ci["low"] is not None
              and ci["low"] != ci["high"]]
    if unsure:
        out.append("Best lr not pinned down: " + ", ".join(
            f"{n} ({lr_label(methods[n]['best_lr_ci']['low'])} to {lr_label(methods[n]['best_lr_ci']['high'])}, "
            f"{percent(methods[n]['best_lr_ci']['modal_share'])} of resamples at "
            f"{lr_label(methods[n]['best_lr_ci']['modal_lr'])})" for n in unsure) + ".")
    out += _next(a, lead, tied, unknown, unsure)
    return " ".join(out)


def _moved(name, m) -> str:
    """'lora by 3 rungs (without seed 2: [3e-3, 1e-1] open above, against [1e-2, 1.78e-2])': the
    variant farthest from the window (a window moves only if some variant's edges differ)."""
    w, ws = m["window"], m["window_seeds"]

    def apart(v):
        return abs(math.log(v["low"] / w["low"])) + abs(math.log(v["high"] / w["high"]))

    seed, far = max(((s, v) for s, v in ws["without"].items() if v), key=lambda sv: apart(sv[1]))
    return (f"{name} by {ws['shift']} rung{'s' * (ws['shift'] != 1)} "
            f"(without seed {seed}: {window_text(far)}, against {window_text(w)})")


def _next(a, lead, tied, unknown, unsure) -> list:
    """Sentences naming the runs that would decide what is not decided yet."""
    methods = a["methods"]
    seeds = {}  # method -> [extra seeds, lrs]

    def add(name, count, lrs=None):
        entry = seeds.setdefault(name, [0, []])
        entry[0] = max(entry[0], count)
        entry[1] += [lr for lr in (lrs or [methods[name]["best_lr"]]) if lr not in entry[1]]

    out, ties, questions = [], [], 0
    for c in tied:
        n = c["seeds_to_decide"]
        if c["noise"] == "questions":  # one seed per rung: measure the seed noise too
            add(c["a"], MORE_SEEDS)
            add(c["b"], MORE_SEEDS)
        elif n is not None and n <= MAX_SEEDS:
            for name in (c["a"], c["b"]):
                if n > methods[name]["best_n"]:
                    add(name, n - methods[name]["best_n"])
            continue
        if "questions" in c["noise"] and c["diff"] and (n is None or c["noise"] == "questions"):
            questions = max(questions, _questions_to_decide(methods[c["a"]]["best_score"], methods[c["b"]]["best_score"]))
        elif c["noise"] != "questions" or not c["diff"]:
            ties.append(c["b"])
    if questions:
        out.append(f"Score at least {questions} GSM8K questions (eval_limit): the question sample hides the gaps.")
    if ties:
        out.append(f"Treat {_names([lead] + ties)} as tied: their gap is too small to resolve "
                   f"with up to {MAX_SEEDS} seeds each.")
    for name in ([lead] + unknown) if unknown else []:
        add(name, MORE_SEEDS)
    for name, m in methods.items():
        if (m.get("window_seeds") or {}).get("unsettled"):
            add(name, MORE_SEEDS, m["window_seeds"]["unsettled"])
    contenders = {lead, *(c["b"] for c in tied), *unknown}
    for name in unsure:
        if name in contenders:
            add(name, MORE_SEEDS, [lr for lr, s in methods[name]["best_lr_ci"]["shares"] if s >= LIKELY])
    runs = _seed_runs(seeds) + _ladder_runs(a)
    if runs:
        out.append("Next: " + "; ".join(runs) + ".")
    elif not out:
        out.append("Nothing more is needed to settle the ranking.")
    return out


def _questions_to_decide(pa, pb):
    """Questions that would put the binomial 95% interval of pa - pb clear of 0 (seeds aside)."""
    return math.ceil(Z * Z * (pa * (1 - pa) + pb * (1 - pb)) / (pa - pb) ** 2)


def _seed_runs(seeds) -> list:
    """'2 more seeds of x at 1e-4 and 3e-4', and methods needing k seeds at their best lr alone grouped."""
    runs, single = [], {}
    for name, (k, lrs) in seeds.items():
        if len(lrs) == 1:
            single.setdefault(k, []).append((name, lr_label(lrs[0])))
        else:
            runs.append(f"{k} more seed{'s' * (k > 1)} of {name} at {_names(lr_label(lr) for lr in sorted(lrs))}")
    for k, pairs in single.items():
        more = f"{k} more seed{'s' * (k > 1)}"
        if len(pairs) == 1:
            runs.append(f"{more} of {pairs[0][0]} at {pairs[0][1]}")
        else:
            runs.append(f"{more} at the best lr of {_names(f'{name} ({lr})' for name, lr in pairs)}")
    return runs


def _ladder_runs(a) -> list:
    """'extend the ladder of x above 2e-3 (try 3e-3 and 2e-2)', methods at the same edge grouped."""
    sides = {}
    for name, m in a["methods"].items():
        for up in (False, True):
            if m.get("edge") in ("both", "high" if up else "low"):
                sides.setdefault((up, m["best_lr"]), []).append(name)
    runs = []
    for (up, lr), names in sides.items():
        tries = _names(lr_label(x) for x in beyond(a["ladder"], lr, up))
        who = f"of {names[0]} " if len(names) == 1 else ""
        whom = f" for {_names(names)}" if len(names) > 1 else ""
        runs.append(f"extend the ladder {who}{'above' if up else 'below'} {lr_label(lr)}{whom} (try {tries})")
    return runs


def beyond(ladder, lr, up) -> list:
    """The next two rungs past lr: the sweep's own (a method may have skipped some), then the
    ladder's pattern one decade on (1e-5, 3e-5, ... 3e-3 gives 1e-2 and 3e-2 above 3e-3)."""
    shifted = {*ladder, *(float(f"{x * (10 if up else 0.1):.6g}") for x in ladder)}
    near = [x for x in shifted if 1 < (x / lr if up else lr / x) <= 10 * (1 + 1e-9)]
    past = sorted(near, reverse=not up)
    return past[:2] or [float(f"{lr * (10 if up else 0.1):.6g}")]


def _names(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
