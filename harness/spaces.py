"""Search spaces: one YAML per method in search_spaces/, found by walking the folder.

A method's file names the method and lists values of its hyperparameters (`grid`), optionally
replaced per preset (a top-level key named after the preset). The learning-rate ladder is shared
by all methods of a preset (`_ladders.yaml`), or given on the command line."""

import itertools
from pathlib import Path

import yaml

import methods
from harness.config import PRESETS, UsageError, load_yaml, positive, quote

FOLDER = Path(__file__).resolve().parents[1] / "search_spaces"


def _read(path: Path):
    if not path.is_file():
        raise UsageError(f"{path} is missing: a search-space folder needs it (copy "
                         f"{FOLDER / path.name} and edit it)")
    try:
        return load_yaml(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        if isinstance(err, yaml.constructor.ConstructorError):  # e.g. !!python/object: never run
            raise UsageError(f"{path}{where}: {err.problem}: only plain YAML values are allowed, "
                             f"remove the tag") from None
        raise UsageError(f"{path}{where} is not valid YAML: fix the file") from None


def ladder(preset: str, folder: Path = FOLDER) -> list[float]:
    ladders = _read(folder / "_ladders.yaml") or {}
    values = ladders.get(preset)
    if not isinstance(values, list) or not values:
        raise UsageError(f"{folder / '_ladders.yaml'}: field {preset} must be a non-empty list of learning rates")
    return [positive(f"{folder / '_ladders.yaml'}: {preset} learning rate", v) for v in values]


def load(folder: Path = FOLDER) -> dict[str, dict]:
    """{method: {"grid": {...}, <preset>: {...}}} for every method file, validated."""
    spaces = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        spec = _read(path)
        if not isinstance(spec, dict) or "method" not in spec:
            raise UsageError(f"{path}: field method is missing: start the file with `method: <name>`")
        try:
            method = methods.get(spec["method"])
        except UsageError as err:
            raise UsageError(f"{path}: field method: {err}") from None
        for key, grid in spec.items():
            if key != "method":
                _check_grid(path, key, grid, method)
        spaces[method.name] = spec
    return spaces


def _check_grid(path, key, grid, method):
    if key != "grid" and key not in PRESETS:
        raise UsageError(f"{path}: unknown field {quote(key)}: use method, grid or a preset name "
                         f"({', '.join(PRESETS)})")
    if not isinstance(grid, dict):
        raise UsageError(f"{path}: field {key} must map hyperparameters to lists of values")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{path}: field {key}.{name} must be a non-empty list")
        for value in values:
            try:
                method.resolve({name: value})
            except UsageError as err:
                raise UsageError(f"{path}: field {key}.{name}: {err}") from None


def grid_for(space: dict, preset: str) -> list[dict]:
    """Every combination of the method's hyperparameter values for a preset."""
    grid = space.get(preset, space.get("grid", {}))
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def plan(method_names: list[str], preset: str, lrs: list[float], seeds: list[int],
         spaces: dict | None = None) -> list[dict]:
    """The grid search: one config per method x hyperparameter combination x lr x seed."""
    spaces = load() if spaces is None else spaces
    missing = [m for m in method_names if m not in spaces]
    if missing:
        raise UsageError(f"method {missing[0]} has no search space: add search_spaces/{missing[0]}.yaml")
    return [dict(method=m, lr=lr, seed=seed, hparams=hp)
            for m in method_names for hp in distinct(m, grid_for(spaces[m], preset))
            for lr in lrs for seed in seeds]


def distinct(method: str, combos: list[dict]) -> list[dict]:
    """The combinations that train differently: one of each group that differs only in hyperparameters
    the method ignores given the others (lora-one's reg and update without preconditioning)."""
    found, seen = [], set()
    for hp in combos:
        inert = methods.get(method).inert(hp)
        key = tuple(sorted((k, str(v)) for k, v in hp.items() if k not in inert))
        if key not in seen:
            seen.add(key)
            found.append(hp)
    return found
