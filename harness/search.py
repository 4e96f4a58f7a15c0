"""Searchers on Ray Tune: Optuna's define-by-run space, and Refine, the adaptive learning-rate ladder
(`--search refine`). The grid needs none: tune.grid_search over the plan.

Refine puts trials where they decide something, instead of a fine grid (quarter decades x seeds).
A *line* is one method at one hyperparameter combination of its grid: every distinct combination
is refined on its own, as the grid would run it, and the report pools them per rung as for a grid.
Learning rates lie on a grid of 2^-k decades (the largest step <= --resolution): integer positions
p with lr = 10^(p / 2^k), so a rung is exact and no (method, lr, seed, hparams) is run twice.

Per line, round 0 is the coarse ladder (whole decades spanning the preset's ladder or --lrs, the
first seed). Each later round is decided when the line's previous round has completed, from that
line's results alone, so the final set of trials depends neither on timing nor on the order in
which trials complete. A round adds, in this order of priority:
1. extension: where the best rung is the top (bottom) rung tried, the rung half a decade above
   (below); diverged rungs bound it from above, as they count as tried;
2. refinement: the midpoint between the best rung and each neighbour further than the resolution;
3. a second seed at the best rung while the line's seed noise is unknown;
4. the robust window's edges (the report's rule: contiguous ok rungs with val loss within
   --loss-tol of the best): the midpoint towards the rung outside, or half a decade past an edge
   that reaches the end of the rungs tried;
5. seeds, in the robust window only (what lies outside it decides nothing the report states):
   a. a second seed at each one-seed rung within noise of the best (|ln a - ln b| within the 95%
      interval of the line's pooled seed noise, reports.statistics.seed_noise, or below TIE): the
      noise may differ from rung to rung (a seed-dependent dip at high lrs), and one seed there
      cannot show it;
   b. up to --seeds at the best rung (its mean sets the window's threshold), then, once it has
      them, at each rung within noise of the best that --seeds seeds at both could still tell
      apart from it: a gap below that interval stays a tie however many seeds run, so seeding it
      buys nothing.
   Where the seeds agree exactly (a method whose init ignores the seed) more seeds cannot
   tell rungs apart: none are added.
4 and 5 wait while 1 or 2 add anything: the window and the seeds follow the best, which may move.
The noise is the line's own (a pool over other lines would make it depend on their timing).
A line stops when a round would add nothing (best lr and window settled to the resolution), or
when its share of --budget is spent: the budget is split evenly over methods, then over each
method's lines, fixed before anything runs (a share freed by a line that settles early is not
given to another, which would make one line's trials depend on another's timing)."""

import json
import logging
import math

from ray.tune.search import Searcher

from reports import robustness
from reports import statistics as stats
from reports.robustness import LOSS_TOL

DIVERGED = 1e9  # the objective of a diverged trial: worse than any real loss, still finite for MLflow
TIE = 1e-3       # relative loss differences below this are ties, however small the seed noise

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)  # decisions go to <sweep>/harness.log (the root handler)


class OptunaSpace:
    """Define-by-run space: methods take turns, so each gets the same number of TPE trials, and
    each method's parameters have their own names, so TPE models every method separately.
    A class, not a closure: Tune pickles the searcher with the experiment."""

    def __init__(self, method_names: list[str], lrs: list[float], grids: dict):
        self.methods, self.low, self.high, self.grids = method_names, min(lrs), max(lrs), grids

    def __call__(self, trial):
        method = self.methods[trial.number % len(self.methods)]
        trial.suggest_float(f"{method}/lr", self.low, self.high, log=True)
        fixed = {"method": method}
        for key, values in self.grids[method].items():
            if len(values) > 1:
                trial.suggest_categorical(f"{method}/{key}", values)
            else:
                fixed[f"{method}/{key}"] = values[0]
        return fixed


def optuna(method_names: list[str], lrs: list[float], grids: dict, seed: int, **objective):
    from ray.tune.search.optuna import OptunaSearch
    return OptunaSearch(space=OptunaSpace(method_names, lrs, grids), seed=seed, **objective)


# ---- refine: the ladder ----

def per_decade(resolution: float) -> int:
    """Positions per decade: the smallest power of two whose step is at most `resolution`."""
    return 2 ** max(0, math.ceil(math.log2(1 / resolution) - 1e-9))


def lr_at(pos: int, steps: int) -> float:
    return float(f"{10 ** (pos / steps):.6g}")  # 6 digits, as the report reads rungs


def decades(lrs: list[float]) -> range:
    """The whole decades spanning `lrs` (exponents)."""
    return range(math.floor(math.log10(min(lrs)) + 1e-9), math.ceil(math.log10(max(lrs)) - 1e-9) + 1)


def coarse(lrs: list[float]) -> list[float]:
    """The coarse ladder: whole decades spanning `lrs`."""
    return [float(f"1e{d}") for d in decades(lrs)]


def fine(lrs: list[float], resolution: float) -> list[float]:
    """The fine grid over the same span: what a full grid at this resolution would run."""
    steps, span = per_decade(resolution), decades(lrs)
    return [lr_at(p, steps) for p in range(span[0] * steps, span[-1] * steps + 1)]


def lines_of(plan: list[dict]) -> list[tuple[str, dict]]:
    """The distinct (method, hyperparameters) of a plan, in its order."""
    found = []
    for entry in plan:
        if (entry["method"], entry["hparams"]) not in found:
            found.append((entry["method"], entry["hparams"]))
    return found


def shares(budget: int, lines: list[tuple[str, dict]]) -> list[int]:
    """Each line's trials: the budget split evenly over methods, then over a method's lines
    (remainders to the first)."""
    def split(total, n):
        return [total // n + (i < total % n) for i in range(n)]
    names = list(dict.fromkeys(m for m, _ in lines))
    per_method = dict(zip(names, split(budget, len(names))))
    out = []
    for name in names:
        mine = [i for i, (m, _) in enumerate(lines) if m == name]
        out += list(zip(mine, split(per_method[name], len(mine))))
    return [n for _, n in sorted(out)]


def least_budget(lines: list[tuple[str, dict]], lrs: list[float]) -> int:
    """A budget whose even split gives every line at least its coarse ladder."""
    counts = [sum(m == name for m, _ in lines) for name in dict.fromkeys(m for m, _ in lines)]
    return len(counts) * max(counts) * len(coarse(lrs))


# ---- refine: the searcher ----

class Refine(Searcher):
    """The adaptive ladder (see the module docstring). Its whole state is plain data, saved as JSON
    with Tune's experiment checkpoints, so a resumed sweep continues where the searcher left off."""

    def __init__(self, lines: list[tuple[str, dict]], lrs: list[float], *, resolution: float = 0.25,
                 seeds: int = 3, first_seed: int = 0, budget: int = 0, max_concurrent: int = 0,
                 loss_tol: float = LOSS_TOL, metric: str = "objective", mode: str = "min"):
        super().__init__(metric=metric, mode=mode)
        self.steps, self.seeds, self.first_seed, self.loss_tol = per_decade(resolution), seeds, first_seed, loss_tol
        self.max_concurrent = max_concurrent
        budget = budget or len(lines) * len(fine(lrs, resolution)) * seeds
        self.lines = [{"method": m, "hparams": hp, "budget": share, "round": 0, "done": False, "end": "",
                       "trials": {}} for (m, hp), share in zip(lines, shares(budget, lines))]
        self.queue, self.live, self.decisions = [], {}, []
        ladder = [d * self.steps for d in decades(lrs)]
        self._note(f"every line: coarse ladder lr={', '.join(f'{lr_at(p, self.steps):g}' for p in ladder)}, "
                   f"seed {first_seed}; at most {budget} trials")
        for pos in ladder:  # rung by rung, so every method starts at once
            for i in range(len(self.lines)):
                self._add(i, pos, first_seed, "coarse ladder")

    # -- Tune's interface --

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # suggest() keeps to it

    def suggest(self, trial_id: str):
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        if not self.queue:
            return Searcher.FINISHED if all(line["done"] for line in self.lines) else None
        i, key = self.queue.pop(0)
        self.live[trial_id] = [i, key]
        line, t = self.lines[i], self.lines[i]["trials"][key]
        spec = dict(method=line["method"], lr=lr_at(t["pos"], self.steps), seed=t["seed"], hparams=line["hparams"])
        return {"trial": spec, "refine": {"round": t["round"], "why": t["why"]}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self.live:  # a retried trial already counted as failed
            return
        i, key = self.live.pop(trial_id)
        line, trial = self.lines[i], self.lines[i]["trials"][key]
        objective = (result or {}).get(self.metric)
        if error or objective is None:
            trial["status"] = "failed"
        elif (result or {}).get("status") == "diverged" or objective >= DIVERGED:
            trial["status"] = "diverged"
        else:
            trial["status"], trial["score"] = "finished", objective
        if all(t["status"] for t in line["trials"].values()):
            self._next_round(i)

    def get_state(self) -> dict:
        return {k: getattr(self, k) for k in ("steps", "seeds", "first_seed", "loss_tol", "max_concurrent",
                                              "lines", "queue", "live", "decisions")}

    def set_state(self, state: dict):
        self.__dict__.update(json.loads(json.dumps(state)))

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

    # -- the rounds --

    def _add(self, i: int, pos: int, seed: int, why: str) -> bool:
        line = self.lines[i]
        key = f"{pos}/{seed}"
        if key in line["trials"]:
            return False
        line["trials"][key] = {"pos": pos, "seed": seed, "round": line["round"], "why": why,
                               "status": None, "score": None}
        self.queue.append([i, key])
        return True

    def _next_round(self, i: int):
        line = self.lines[i]
        wanted = self._wanted(line)
        room = line["budget"] - len(line["trials"])
        if not wanted or room <= 0:
            line["done"], line["end"] = True, "settled" if not wanted else "budget spent"
            self._note(f"{line['method']}{_hp(line)}: {line['end']} after {len(line['trials'])} trials: "
                       f"{summary(line, self.steps, self.loss_tol)}")
            return
        line["round"] += 1
        for pos, seed, why in wanted[:room]:
            self._add(i, pos, seed, why)
            self._note(f"{line['method']}{_hp(line)} round {line['round']}: lr={lr_at(pos, self.steps):g} "
                       f"seed={seed}: {why}")

    def _note(self, text: str):
        self.decisions.append(text)
        log.info("refine: %s", text)

    def _wanted(self, line) -> list[tuple[int, int, str]]:
        """The next round's (position, seed, why), most important first, none run before."""
        view = Line(line, self.steps, self.loss_tol)
        half, seed0, out = max(1, self.steps // 2), self.first_seed, []

        def want(pos, seed, why):
            if f"{pos}/{seed}" not in line["trials"] and (pos, seed) not in [(p, s) for p, s, _ in out]:
                out.append((pos, seed, why))

        tried, lr = view.tried, lambda p: f"{lr_at(p, self.steps):g}"
        b = view.best
        if b is None:  # nothing usable: lower, if anything diverged (crashes alone: nothing to learn)
            if any(t["status"] == "diverged" for t in line["trials"].values()):
                want(tried[0] - half, seed0, "extend below: no usable rung yet")
            return out
        if b == tried[-1]:
            want(b + half, seed0, f"extend above: best {lr(b)} is the top rung")
        if b == tried[0]:
            want(b - half, seed0, f"extend below: best {lr(b)} is the bottom rung")
        for n in view.neighbours(b):
            if n is not None and abs(n - b) > 1:
                want((b + n) // 2, seed0, f"refine between best {lr(b)} and {lr(n)} ({view.status[n]})")
        moving = bool(out)
        if view.noise is None and self.seeds > 1:
            want(b, seed0 + view.count(b), f"seed {view.count(b) + 1}: seed noise unknown")
        if moving:  # the window and more seeds wait for the best to settle
            return out
        low, high = view.window
        for edge, up in ((low, False), (high, True)):
            outside = view.neighbours(edge)[up]
            if outside is None:
                want(edge + (half if up else -half), seed0,
                     f"extend {'above' if up else 'below'}: the window reaches the {'top' if up else 'bottom'} rung")
            elif abs(outside - edge) > 1:
                want((edge + outside) // 2, seed0, f"window edge between {lr(edge)} (in) and {lr(outside)} (out)")
        if view.noise and view.noise["sd"] > 0:
            unchecked = [p for p in view.close_to_best() if low <= p <= high and view.count(p) == 1]
            for p in unchecked if self.seeds > 1 else []:
                want(p, seed0 + 1, "seed 2: in the window on one seed; is its seed noise the best's?")
            seeding = [p for p in view.worth_seeding(self.seeds) if low <= p <= high]
            for p in [b] if view.count(b) < self.seeds else seeding:  # others are judged by the best's mean
                why = "the best: its mean sets the window" if p == b else "within noise of the best, separable"
                for s in range(view.count(p), self.seeds):
                    want(p, seed0 + s, f"seed {s + 1} of {self.seeds}: {why}")
        return out


class Line:
    """A line's results read with the report's rules (reports.robustness): rungs, best, window."""

    def __init__(self, line: dict, steps: int, loss_tol: float):
        self.line, self.steps = line, steps
        trials = list(line["trials"].values())
        self.tried = sorted({t["pos"] for t in trials})
        rows = [dict(method=line["method"], lr=lr_at(t["pos"], steps), seed=t["seed"], hparams={},
                     status=t["status"], val_loss=t["score"]) for t in trials if t["status"]]
        analysis = robustness.analyze(rows, metric="val_loss", loss_tol=loss_tol, resamples=1)
        m = analysis["methods"][line["method"]]
        pos = {lr_at(p, steps): p for p in self.tried}
        self.rungs = {pos[r["lr"]]: r for r in m["rungs"]}
        self.status = {p: r["status"] for p, r in self.rungs.items()}
        self.noise = analysis["noise"]["val_loss"]
        self.best = pos[m["best_lr"]] if m["best_lr"] is not None else None
        self.window = (pos[m["window"]["low"]], pos[m["window"]["high"]]) if m["window"] else None

    def count(self, p: int) -> int:
        return sum(t["pos"] == p for t in self.line["trials"].values())

    def neighbours(self, p: int) -> tuple:
        """(the nearest rung tried below p, above p); None where there is none."""
        below = [q for q in self.tried if q < p]
        above = [q for q in self.tried if q > p]
        return (below[-1] if below else None, above[0] if above else None)

    def close_to_best(self) -> list[int]:
        """Ok rungs whose mean loss is within noise of the best's (the best among them)."""
        best = self.rungs[self.best]
        return [p for p, r in self.rungs.items() if r["status"] == "ok" and self._close(r, best)]

    def worth_seeding(self, seeds: int) -> list[int]:
        """The best rung, then the rungs within noise of it that `seeds` seeds at both could still
        tell apart from it: a gap below what that many seeds resolve stays a tie however many run."""
        best = self.rungs[self.best]
        return [self.best] + [p for p in self.close_to_best() if p != self.best
                              and self._gap(self.rungs[p], best) > self._resolvable(seeds, seeds)]

    def _close(self, r, best) -> bool:
        return self._gap(r, best) <= self._resolvable(r["n"], best["n"])

    @staticmethod
    def _gap(r, best) -> float:
        return abs(math.log(max(r["score"], 1e-300)) - math.log(max(best["score"], 1e-300)))

    def _resolvable(self, n: int, m: int) -> float:
        """The smallest gap in log loss that means of n and m seeds tell apart (95%)."""
        sd = self.noise["sd"] if self.noise else 0.0
        df = self.noise["df"] if self.noise else None
        return max(TIE, stats.t975(df) * sd * math.sqrt(1 / n + 1 / m))


def outcome(line: dict, steps: int, loss_tol: float) -> dict:
    """A line's answer: best lr, the rungs within noise of it (the best lr is stated as lying
    among them), the robust window, and the seeds at the best; empty before any trial ended."""
    if not any(t["status"] for t in line["trials"].values()):
        return {}
    view = Line(line, steps, loss_tol)
    if view.best is None:
        return {"best": None}
    close = view.close_to_best()
    lr = lambda p: lr_at(p, steps)
    return {"best": lr(view.best), "best_low": lr(min(close)), "best_high": lr(max(close)),
            "window_low": lr(view.window[0]), "window_high": lr(view.window[1]),
            "seeds_at_best": view.rungs[view.best]["n"]}


def summary(line: dict, steps: int, loss_tol: float) -> str:
    """'best lr 0.1 (within noise: 0.0562 to 0.1), window [0.0316, 0.178], 3 seed(s) at the best'."""
    o = outcome(line, steps, loss_tol)
    if not o:
        return "no trial ended"
    if o["best"] is None:
        return "no usable learning rate"
    return (f"best lr {o['best']:g} (within noise: {o['best_low']:g} to {o['best_high']:g}), window "
            f"[{o['window_low']:g}, {o['window_high']:g}], {o['seeds_at_best']} seed(s) at the best")


def results(state: dict) -> dict:
    """What refine.json holds: each line's outcome and the decisions in order."""
    tol = state.get("loss_tol", LOSS_TOL)  # a state saved before --loss-tol existed
    lines = [{"method": line["method"], "hparams": line["hparams"], "trials": len(line["trials"]),
              "budget": line["budget"], "end": line["end"] or "unfinished", "rounds": line["round"] + 1,
              "summary": summary(line, state["steps"], tol), **outcome(line, state["steps"], tol)}
             for line in state["lines"]]
    return {"lines": lines, "decisions": state["decisions"]}


def _hp(line) -> str:
    return "".join(f" {k}={v}" for k, v in line["hparams"].items())
