"""The accuracy-cost trade-off: one search per budget, and the Pareto front they trace.

A single search answers "what is the best policy at 0.5 x the 8-bit cost?";
users choosing a budget want the whole curve.  :func:`sweep` runs
:func:`~haq_plugin.engine.search.search` once per budget into a sub-folder of its
output directory (``budget-0.5/`` holds the usual search outputs) and reports
every budget's searched policy beside the best uniform one.

The budgets are fractions of the 8-bit cost, or, for a size sweep of a language
model, bits per weight (``budgets=["3.0bpw", "3.5bpw"]``, folders
``budget-3.5bpw/``; :mod:`haq_plugin.analyses.sweep_budgets`).  The metric is the
searches' (``metric="perplexity"``: lower is better): the Pareto front and every
report compare in its direction.  A bits-per-weight sweep also reports each
policy's stored bits per weight and its latency on the hardware model (for
``llm-decode``: seconds per generated token), because a language model is
chosen by its size and its decode speed, not by a fraction of 8 bits.

What is shared between budgets, so that a sweep costs little more than its
searches' episodes:

* the prepared backend: the backend instance is marked ``reuse_prepared`` for
  the sweep, so every search after the first skips ``prepare``
  (:func:`haq_plugin.api.backend.prepare_for_search`);
* the cost table: every search reads the disk cache the first one wrote
  (``use_cache=False`` makes each budget simulate again);
* the float evaluation: measured once and passed as ``float_accuracy``.

Budgets below the cheapest reachable cost are reported with the smallest
feasible budget and skipped.  ``resume=True`` continues a sweep in the same
directory with the same settings: a budget whose folder holds a finished
``policy.json`` is kept as it is, an interrupted one resumes from its checkpoint,
the rest run.  The rows of ``pareto.csv`` are read back from the policy files, so
they always describe the files on disk.
"""

from __future__ import annotations

import inspect
import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from torch import nn

from haq_plugin.storage import outputs
from haq_plugin.api.backend import QuantBackend, prepare_for_search
from haq_plugin.engine.space import KEPT_BITS, fixed_bits_for
from haq_plugin.api.errors import HaqError, InfeasibleBudget
from haq_plugin.storage.files import read_json, write_text_atomic
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.engine.backend_faults import contained
from haq_plugin.engine.evaluate import evaluate_policy, float_accuracy as measure_float
from haq_plugin.api.plugins import load_backend, load_hardware
from haq_plugin.api.policy import Policy
from haq_plugin.engine.results import SearchResult
from haq_plugin.engine.search import search
from haq_plugin.engine.threads import check_threads, torch_threads
from haq_plugin.engine.bits_per_weight import table_bits_per_weight
from haq_plugin.engine.costs import CostTable, build_cost_table, with_backend_storage
from haq_plugin.engine.metric import metric_named
from haq_plugin.analyses.sweep_report import SweepPoint, SweepResult
from haq_plugin.analyses.sweep_budgets import (BITS_PER_WEIGHT, FRACTION, BudgetValue, budget_folder, budget_kind,
                                               budget_label, budget_number, check_budgets, parse_budgets)

__all__ = ["SweepPoint", "SweepResult", "sweep", "check_budgets", "parse_budgets", "budget_folder", "budget_label"]

SWEEP_FILE = "sweep.json"
UNIFORM_POLICY = "uniform_policy.json"
#: search() parameters the sweep sets itself, per budget or once for all.
OWNED_BY_SWEEP = frozenset({"hardware", "backend", "budget", "eval_fn", "calibration_data", "output_dir",
                            "resume", "force", "progress", "float_accuracy", "task"})
#: Search options that are data, caching or placement switches, not settings that change a result.
NOT_SETTINGS = frozenset({"train_data", "use_cache", "device", "ray_address", "threads"})


def search_defaults() -> dict[str, Any]:
    """The keyword options of :func:`search` a sweep passes through, with their defaults."""
    return {name: p.default for name, p in inspect.signature(search).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in OWNED_BY_SWEEP}


def _check_search_options(options: Mapping[str, Any]) -> dict[str, Any]:
    defaults = search_defaults()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        owned = sorted(set(unknown) & OWNED_BY_SWEEP)
        hint = f" ({', '.join(owned)} are set by the sweep itself)" if owned else ""
        raise HaqError(f"sweep() got option(s) {', '.join(unknown)} it cannot pass to search{hint}. Search options "
                       f"are: {', '.join(sorted(defaults))}.")
    return {**defaults, **options}


def _jsonable(value: Any) -> Any:
    """The value as it comes back from JSON (dataclasses such as DDPGConfig become objects)."""
    def plain(item: Any) -> Any:
        return asdict(item) if is_dataclass(item) and not isinstance(item, type) else str(item)
    return json.loads(json.dumps(value, sort_keys=True, default=plain))


# -- the public entry point -----------------------------------------------------------------
def sweep(model: nn.Module, example_input: Any, *, budgets: Sequence[BudgetValue], hardware: HardwareModel | str,
          backend: QuantBackend | str, eval_fn: Callable[[nn.Module], float], calibration_data: Iterable[Any],
          output_dir: str | Path, test_eval_fn: Callable[[nn.Module], float] | None = None,
          resume: bool = False, force: bool = False, progress: bool = True, float_accuracy: float | None = None,
          task: Mapping[str, Any] | None = None, metric: str = "accuracy", decisions: str = "layer",
          **search_options: Any) -> SweepResult:
    """Run one :func:`search` per budget into ``output_dir`` and write the Pareto front.

    ``budgets`` are fractions of the 8-bit cost, or bits per weight
    (``["3.0bpw", "3.5bpw"]``, size constraint), not mixed.  ``metric`` and
    ``decisions`` mean what they mean for :func:`search`; the other
    ``search_options`` are passed to every search too (``constraint``,
    ``strategy``, ``episodes``, ``seed``, ``ddpg``, ...).  ``test_eval_fn``, when
    given, adds the held-out test value of the metric to every row.  See the
    module docstring for what is shared between budgets, infeasible budgets and
    resuming.
    """
    from haq_plugin.analyses.sweep_report import write_sweep_outputs

    budget_list = check_budgets(budgets)
    metric_named(metric)  # an unknown metric fails before any evaluation
    options = _check_search_options({**search_options, "metric": metric, "decisions": decisions})
    _check_bits_per_weight_sweep(budget_list, options)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    be = load_backend(backend) if isinstance(backend, str) else backend
    settings = _jsonable({
        "hardware": {"name": hw.name, "config": hw.config}, "backend": {"name": be.name, "config": be.config},
        "search": {k: v for k, v in options.items() if k not in NOT_SETTINGS}, "task": dict(task or {}),
    })
    threads = check_threads(options["threads"])
    layers = extract_layers(model, example_input)
    note = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    directory, lock = outputs.lock_and_prepare(
        Path(output_dir), lambda: _prepare_directory(Path(output_dir), settings, budget_list, resume, force))
    with lock, torch_threads(threads):  # one sweep per directory; threads for the float reference too
        if float_accuracy is None:
            float_accuracy = measure_float(model, eval_fn)
        run = _SweepRun(model, example_input, hw, be, eval_fn, calibration_data, test_eval_fn, layers, options, note)
        previous, be.reuse_prepared = be.reuse_prepared, True
        try:
            statuses, searches, infeasible = run.search_budgets(
                budget_list, directory, resume, dict(progress=progress, float_accuracy=float_accuracy, task=task))
            if not statuses:
                smallest = min(infeasible.values())  # only fraction budgets are infeasible; bpw ones are refused
                raise HaqError(f"No budget of the sweep is feasible: the smallest feasible {options['constraint']} "
                               f"budget is {smallest:.4f} x the 8-bit cost; give budgets from {smallest:.4f} to 1.")
            points = [point for budget, status in statuses.items()
                      for point in run.points(directory, budget, status)]
            references = run.references(float_accuracy, budget_list[0])
        finally:
            be.reuse_prepared = previous
        result = SweepResult(points=points, infeasible=infeasible, settings=settings, output_dir=directory,
                             searches=searches, **references)
        result.files = write_sweep_outputs(result)
    return result


def _check_bits_per_weight_sweep(budgets: tuple[BudgetValue, ...], options: Mapping[str, Any]) -> None:
    """A bits-per-weight sweep budgets size and takes its sizes from the budgets, before any search starts."""
    if options.get("bits_per_weight") is not None:
        raise HaqError("sweep() takes bits per weight as its budgets (budgets=['3.0bpw', '3.5bpw']), not "
                       "bits_per_weight=; remove bits_per_weight.")
    if budget_kind(budgets[0]) == BITS_PER_WEIGHT and options["constraint"] != "size":
        raise HaqError(f"bits-per-weight budgets ({', '.join(map(budget_label, budgets))}) are size budgets; use "
                       f"constraint='size' (--constraint size), or give {options['constraint']} budgets as "
                       "fractions of the 8-bit cost (e.g. 0.3,0.5,0.8).")


def _prepare_directory(directory: Path, settings: dict[str, Any], budgets: tuple[BudgetValue, ...], resume: bool,
                       force: bool) -> Path:
    """A fresh (or forced) sweep directory, or the one to resume with the same settings."""
    stored_path = directory / SWEEP_FILE
    if resume:
        if not stored_path.is_file():
            raise HaqError(f"Cannot resume a sweep in {directory}: it has no {SWEEP_FILE}. Start the sweep without "
                           "resume (--resume), or point to the output directory of an earlier sweep.")
        stored = read_json(stored_path, "Sweep file")
        saved = stored.get("settings", {}) if isinstance(stored, dict) else {}
        differences = [f"{key}: before {saved.get(key)!r}, now {value!r}"
                       for key, value in settings.items() if saved.get(key) != value]
        if differences:
            raise HaqError(f"Cannot resume the sweep in {directory}: its settings differ ("
                           + "; ".join(differences) + "). Resume with the settings it was started with (budgets "
                           "may change), or start a new sweep in another directory.")
    else:
        outputs.prepare_output_dir(directory, resume=False, force=force)
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stored_path, json.dumps({"budgets": list(budgets), "settings": settings}, indent=2) + "\n")
    return directory


class _SweepRun:
    """The objects every budget's search shares, and the per-budget steps."""

    def __init__(self, model: nn.Module, example_input: Any, hardware: HardwareModel, backend: QuantBackend,
                 eval_fn: Callable[[nn.Module], float], calibration_data: Iterable[Any],
                 test_eval_fn: Callable[[nn.Module], float] | None, layers: list[LayerSpec],
                 options: dict[str, Any], note: Callable[[str], None]) -> None:
        self.model, self.example_input, self.hardware, self.backend = model, example_input, hardware, backend
        self.eval_fn, self.calibration_data, self.test_eval_fn = eval_fn, calibration_data, test_eval_fn
        self.layers, self.options, self.note = layers, options, note
        self._table: CostTable | None = None

    def search_budgets(self, budgets: tuple[BudgetValue, ...], directory: Path, resume: bool, shared: dict[str, Any]
                       ) -> tuple[dict[BudgetValue, str], dict[BudgetValue, SearchResult], dict[BudgetValue, float]]:
        """Search every budget (or keep/resume it); return each feasible budget's status, the searches, the rest."""
        statuses: dict[BudgetValue, str] = {}
        searches: dict[BudgetValue, SearchResult] = {}
        infeasible: dict[BudgetValue, float] = {}
        for i, budget in enumerate(budgets, 1):
            folder = directory / budget_folder(budget)
            status = _folder_status(folder, budget) if resume else "new"
            where = f"sweep budget {budget_label(budget)} ({i} of {len(budgets)})"
            if status == "kept":
                self.note(f"{where}: finished earlier, kept ({folder / outputs.POLICY}).")
                statuses[budget] = status
                continue
            if status == "new":
                (folder / outputs.POLICY).unlink(missing_ok=True)
            self.note(f"{where}: {'resuming' if status == 'resumed' else 'searching'}")
            try:
                searches[budget] = search(
                    self.model, self.example_input, hardware=self.hardware, backend=self.backend, budget=budget,
                    eval_fn=self.eval_fn, calibration_data=self.calibration_data, output_dir=folder,
                    resume=status == "resumed", force=status == "new", **shared, **self.options)
            except InfeasibleBudget as exc:
                infeasible[budget] = exc.smallest
                self.note(f"{where}: infeasible, skipped; the smallest feasible {self.options['constraint']} "
                          f"budget is {exc.smallest:.4f}.")
                continue
            statuses[budget] = "searched" if status == "new" else status
        return statuses, searches, infeasible

    def points(self, directory: Path, budget: BudgetValue, status: str) -> list[SweepPoint]:
        """The searched and the best uniform policy of one finished budget, read from its policy file."""
        folder = directory / budget_folder(budget)
        policy = Policy.load(folder / outputs.POLICY)
        policy.check_layers(self.layers)
        prov = policy.provenance
        strategy = prov["search"]["strategy"]
        rows = [SweepPoint(budget, strategy, float(prov["achieved"]["cost_fraction"]),
                           float(prov["achieved"]["accuracy"]), self._test_accuracy(policy.bits),
                           f"{folder.name}/{outputs.POLICY}", status, **self._axes(budget, policy.bits))]
        uniform = prov.get("uniform_baseline")
        if uniform is not None and strategy != "uniform":
            path = self._uniform_policy(folder, prov)
            bits = Policy.load(path).bits
            rows.append(SweepPoint(budget, "uniform", float(uniform["cost_fraction"]), float(uniform["accuracy"]),
                                   self._test_accuracy(bits), f"{folder.name}/{path.name}", status,
                                   **self._axes(budget, bits)))
        return rows

    def cost_table(self) -> CostTable:
        """The hardware's cost table with the backend's stored sizes (the one the searches read, from the cache)."""
        if self._table is None:
            table = build_cost_table(self.hardware, self.layers, cache=bool(self.options["use_cache"]))
            self._table = with_backend_storage(table, self.backend)
        return self._table

    def _axes(self, budget: BudgetValue, bits: Mapping[str, tuple[int, int]]) -> dict[str, float | None]:
        """Bits per weight of the searched layers and hardware latency of a policy, in a bits-per-weight sweep."""
        if budget_kind(budget) != BITS_PER_WEIGHT:
            return {}
        o, table = self.options, self.cost_table()
        fixed = fixed_bits_for(self.layers, o["keep_first_layer_8bit"], o["keep_last_layer_8bit"], o["pins"])
        names = [layer.name for layer in self.layers if layer.name not in fixed] or [l.name for l in self.layers]
        ordered = [tuple(bits[layer.name]) for layer in self.layers]
        return {"bits_per_weight": table_bits_per_weight(table, ordered, names),
                "latency": table.policy_cost("latency", ordered)}

    def _uniform_policy(self, folder: Path, prov: Mapping[str, Any]) -> Path:
        """``uniform_policy.json`` of a budget (written once): the best uniform policy, kept layers as searched."""
        path = folder / UNIFORM_POLICY
        if path.is_file():
            return path
        o, uniform = self.options, prov["uniform_baseline"]
        fixed = fixed_bits_for(self.layers, o["keep_first_layer_8bit"], o["keep_last_layer_8bit"], o["pins"])
        width = int(uniform["bits"])
        bits = [fixed.get(layer.name, (width, width)) for layer in self.layers]
        return Policy.from_bits(self.layers, bits, source="uniform baseline", hardware=prov["hardware"],
                                backend=prov["backend"], constraint=prov["constraint"], budget=prov["budget"],
                                achieved={k: uniform[k] for k in ("cost", "cost_fraction", "accuracy")}).save(path)

    def _ensure_prepared(self) -> None:
        with contained(self.backend, "prepare"):
            prepare_for_search(self.backend, self.model, self.example_input, self.calibration_data)

    def _test_accuracy(self, bits: Mapping[str, tuple[int, int]]) -> float | None:
        if self.test_eval_fn is None:
            return None
        self._ensure_prepared()
        return evaluate_policy(self.backend, bits, self.test_eval_fn)

    def references(self, float_val: float, budget: BudgetValue) -> dict[str, float | None]:
        """Float and uniform 8-bit values of the metric (validation, and test where there is a test split),
        and the 8-bit policy on a bits-per-weight sweep's axes."""
        self._ensure_prepared()
        eight = {layer.name: (KEPT_BITS, KEPT_BITS) for layer in self.layers}
        test = self.test_eval_fn
        axes = self._axes(budget, eight)
        return {"float_accuracy": float_val, "eight_bit_accuracy": evaluate_policy(self.backend, eight, self.eval_fn),
                "float_test_accuracy": None if test is None else measure_float(self.model, test),
                "eight_bit_test_accuracy": None if test is None else evaluate_policy(self.backend, eight, test),
                "eight_bit_bits_per_weight": axes.get("bits_per_weight"), "eight_bit_latency": axes.get("latency")}


def _folder_status(folder: Path, budget: BudgetValue) -> str:
    """``kept`` (a finished policy.json), ``resumed`` (a checkpoint) or ``new``, for a resumed sweep."""
    policy_path = folder / outputs.POLICY
    if policy_path.is_file():
        prov = Policy.load(policy_path).provenance
        if budget_kind(budget) == BITS_PER_WEIGHT:
            stored = prov.get("search", {}).get("bits_per_weight")
            searched = None if stored is None else f"{float(stored):g}bpw"
        else:
            searched = prov.get("budget", {}).get("fraction")
        if searched != budget:
            raise HaqError(f"{policy_path} was searched at budget {searched!r}, not {budget_label(budget)}; move "
                           "the folder away or start a new sweep.")
        return "kept"
    return "resumed" if (folder / outputs.CHECKPOINT).is_file() else "new"
