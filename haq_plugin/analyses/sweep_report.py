"""Files a sweep writes beside its per-budget folders, each atomically.

==============  ====================================================================
``pareto.csv``  one row per budget and kind of policy (searched, best uniform)
``pareto.png``  accuracy against achieved cost: the searched front, the best uniform
                policy per budget, the uniform 8-bit and the float marks
``summary.md``  the same table for reading, the references and infeasible budgets
==============  ====================================================================

Columns and labels name the sweep's metric (``val_perplexity``, "validation
perplexity").  A bits-per-weight sweep adds ``bits_per_weight`` and
``latency_s`` (the hardware model's latency of the policy; per generated token
on ``llm-decode``) to the table, marks the Pareto front in the summary, and
draws the metric against both, side by side, since those are the two axes a
language model is chosen on.  An accuracy sweep over fractions of the 8-bit
cost writes what it always wrote.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from haq_plugin.storage.files import write_text_atomic, write_via_temp
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.storage.outputs import POLICY
from haq_plugin.analyses.sweep_budgets import BITS_PER_WEIGHT, FRACTION, BudgetValue, budget_kind, budget_label
from haq_plugin.engine.metric import Metric, metric_named
from haq_plugin.engine.results import SearchResult


PARETO_CSV = "pareto.csv"
PARETO_FIGURE = "pareto.png"
SUMMARY = "summary.md"
CSV_COLUMNS = ("budget", "strategy", "cost_fraction", "val_accuracy", "test_accuracy", "policy_file", "status")



@dataclass
class SweepPoint:
    """One row of ``pareto.csv``: a policy found (or the best uniform one) at one budget.

    ``budget`` is a fraction or ``"3.5bpw"``; ``val_accuracy`` and
    ``test_accuracy`` hold the sweep's metric (a perplexity for a language
    model).  ``policy_file`` is relative to the sweep directory; ``status`` says
    whether the budget was searched now, resumed, or kept from an earlier run.
    ``bits_per_weight`` (stored bits per weight of the searched layers) and
    ``latency`` (the hardware model's latency of the policy, seconds) are set in
    a bits-per-weight sweep.
    """

    budget: BudgetValue
    strategy: str
    cost_fraction: float
    val_accuracy: float
    test_accuracy: float | None
    policy_file: str
    status: str
    bits_per_weight: float | None = None
    latency: float | None = None


@dataclass
class SweepResult:
    """Every budget's outcome, the reference values of the metric, and where the files went.

    ``eight_bit_bits_per_weight`` and ``eight_bit_latency`` place the uniform
    8-bit reference on a bits-per-weight sweep's axes (None otherwise).
    """

    points: list[SweepPoint]
    infeasible: dict[BudgetValue, float]
    float_accuracy: float
    eight_bit_accuracy: float
    float_test_accuracy: float | None
    eight_bit_test_accuracy: float | None
    settings: dict[str, Any]
    output_dir: Path
    searches: dict[BudgetValue, SearchResult] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    eight_bit_bits_per_weight: float | None = None
    eight_bit_latency: float | None = None

    @property
    def metric(self) -> Metric:
        """What the values are (accuracy, or perplexity where lower is better), from the searches' settings."""
        return metric_named(self.settings["search"].get("metric", "accuracy"))

    @property
    def budget_kind(self) -> str:
        """``"bpw"`` when the budgets are bits per weight, else ``"fraction"``."""
        return budget_kind(self.points[0].budget) if self.points else FRACTION

    def front(self) -> list[SweepPoint]:
        """The Pareto front of every point: none cheaper (x) and at least as good (the metric's direction).

        The x axis is the bits per weight in a bits-per-weight sweep, else the
        achieved cost fraction; cheapest first.
        """
        x = (lambda p: p.bits_per_weight) if self.budget_kind == BITS_PER_WEIGHT else (lambda p: p.cost_fraction)
        metric, best = self.metric, None
        chosen = []
        for p in sorted(self.points, key=lambda p: (x(p), -metric.score(p.val_accuracy, self.float_accuracy))):
            if best is None or metric.is_better(p.val_accuracy, best.val_accuracy):
                chosen.append(p)
                best = p
        return chosen

    def searched(self) -> list[SweepPoint]:
        """The searched policies (one per feasible budget), cheapest budget first."""
        return [p for p in self.points if p.strategy == self.settings["search"]["strategy"]]

    def uniform(self) -> list[SweepPoint]:
        """The best uniform policy of each budget where one fits (the searched ones for strategy uniform)."""
        return [p for p in self.points if p.strategy == "uniform"]


# -- input checks -------------------------------------------------------------------------


def _accuracy(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def value_label(metric: Metric) -> str:
    """``accuracy (%)`` or ``perplexity``: a column or axis title of the metric."""
    return f"{metric.name} (%)" if metric.unit == "%" else metric.name


def _by_bits_per_weight(result: SweepResult) -> bool:
    return result.budget_kind == BITS_PER_WEIGHT


def csv_columns(result: SweepResult) -> tuple[str, ...]:
    """:data:`CSV_COLUMNS` with the metric's name, and the bits-per-weight sweep's two axes."""
    name = result.metric.name
    columns = [c.replace("accuracy", name) for c in CSV_COLUMNS]
    if _by_bits_per_weight(result):
        columns[3:3] = ["bits_per_weight", "latency_s"]
    return tuple(columns)


def pareto_csv(result: SweepResult) -> str:
    """``pareto.csv``: one row per point, the metric's values to 4 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns(result))
    for p in result.points:
        row = [budget_label(p.budget), p.strategy, f"{p.cost_fraction:.6f}", _accuracy(p.val_accuracy),
               _accuracy(p.test_accuracy), p.policy_file, p.status]
        if _by_bits_per_weight(result):
            assert p.bits_per_weight is not None and p.latency is not None
            row[3:3] = [f"{p.bits_per_weight:.4f}", f"{p.latency:.6g}"]
        writer.writerow(row)
    return out.getvalue()


def summary_markdown(result: SweepResult) -> str:
    """The sweep for reading: settings, per-budget table, references, infeasible budgets."""
    s = result.settings
    search, metric, by_bpw = s["search"], result.metric, _by_bits_per_weight(result)
    has_test = result.float_test_accuracy is not None
    budgets = ("size budgets in stored bits per weight of the searched layers, scales included"
               if by_bpw else f"{search['constraint']} budgets as fractions of the uniform 8-bit cost")
    direction = "" if metric.higher_is_better else f"; {metric.name} on the validation data, lower is better"
    lines = [
        "# HAQ budget sweep", "",
        f"Strategy {search['strategy']} ({search['episodes']} episodes per budget, seed {search['seed']}) on hardware "
        f"'{s['hardware']['name']}' with backend '{s['backend']['name']}'; {budgets}{direction}.", "",
    ]
    label = value_label(metric)
    headers = ["budget", "policy", "cost x 8-bit"] + (["bits per weight", "latency (ms)"] if by_bpw else [])
    headers += [f"val {label}"] + ([f"test {label}"] if has_test else [])
    headers += ["vs best uniform"] + (["Pareto front"] if by_bpw else []) + ["files"]
    uniform = {p.budget: p for p in result.uniform()}
    front = [id(p) for p in result.front()]
    rows = []
    for p in result.points:
        searched = p.policy_file.endswith(f"/{POLICY}")
        base = uniform.get(p.budget)
        gain = f"{p.val_accuracy - base.val_accuracy:+.2f}" if searched and base and base is not p else ""
        row = [budget_label(p.budget), p.strategy if searched else "best uniform", f"{p.cost_fraction:.4f}"]
        if by_bpw:
            row += [f"{p.bits_per_weight:.3f}", f"{(p.latency or 0.0) * 1e3:.4g}"]
        row += [f"{p.val_accuracy:.2f}"] + ([_accuracy(p.test_accuracy, 2)] if has_test else []) + [gain]
        row += (["yes" if id(p) in front else ""] if by_bpw else [])
        rows.append(row + [f"`{p.policy_file}` ({p.status})"])
    lines.append(markdown_table(headers, rows))
    eight = f"{result.eight_bit_bits_per_weight:.3f} bits per weight, " if by_bpw else ""
    ref = f"- uniform 8-bit: {eight}cost 1.0000 x 8-bit, val {metric.name} {metric.format(result.eight_bit_accuracy)}"
    ref += f", test {metric.format(result.eight_bit_test_accuracy)}" if has_test else ""
    flt = f"- float: val {metric.name} {metric.format(result.float_accuracy)}"
    flt += f", test {metric.format(result.float_test_accuracy)}" if has_test else ""
    lines += ["## References", "", ref, flt, ""]
    if result.infeasible:
        lines += ["## Infeasible budgets (skipped)", ""]
        lines += [f"- {budget_label(budget)}: the smallest feasible budget is {smallest:.4f}"
                  for budget, smallest in sorted(result.infeasible.items())]
        lines.append("")
    lines += ["Each `budget-*/` folder holds that search's outputs (policy.json, the backend export, episodes.csv, "
              "summary.md, policy.png); `uniform_policy.json` is its best uniform policy.", ""]
    return "\n".join(lines)


def write_pareto_figure(path: Path, result: SweepResult) -> Path | None:
    """The metric against achieved cost (a bits-per-weight sweep: against bits per weight and against the
    hardware's latency, side by side); matplotlib's object API with the Agg canvas (no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("haq-plugin: matplotlib is not installed; skipping pareto.png (pip install 'haq-plugin[plot]').",
              file=sys.stderr)
        return None
    by_bpw = _by_bits_per_weight(result)
    fig = Figure(figsize=(11.0, 4.4) if by_bpw else (6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    hw, constraint = result.settings["hardware"]["name"], result.settings["search"]["constraint"]
    name = result.metric.name
    if by_bpw:
        left, right = fig.subplots(1, 2, sharey=True)
        _draw(left, result, lambda p: p.bits_per_weight, result.eight_bit_bits_per_weight)
        left.set_xlabel("stored bits per weight of the searched layers (scales included)")
        left.set_title(f"{name} against bits per weight (labels: budget)", fontsize=9)
        _draw(right, result, lambda p: p.latency * 1e3, (result.eight_bit_latency or 0.0) * 1e3)
        right.set_xlabel(f"latency on the '{hw}' model (ms{' per token' if hw == 'llm-decode' else ''})")
        right.set_title(f"{name} against the {hw} latency model", fontsize=9)
        fig.suptitle(f"{hw}, {result.settings['backend']['name']}", fontsize=9)
    else:
        ax = fig.add_subplot()
        _draw(ax, result, lambda p: p.cost_fraction, 1.0)
        ax.set_xlabel(f"achieved {constraint} (fraction of uniform 8-bit)")
        ax.set_title(f"{hw}, {result.settings['backend']['name']}: {name} against "
                     f"{constraint} (labels: budget)", fontsize=9)
    fig.tight_layout()
    return write_via_temp(path, lambda tmp: fig.savefig(tmp, format="png"))


def _draw(ax: Any, result: SweepResult, x: Callable[[Any], float], eight_x: float | None) -> None:
    """One panel: the searched front, the best uniform policies, the 8-bit and float references."""
    metric = result.metric
    searched = sorted(result.searched(), key=x)
    strategy = result.settings["search"]["strategy"]
    ax.plot([x(p) for p in searched], [p.val_accuracy for p in searched], marker="o", color="#1f77b4",
            label=f"{strategy} search (one per budget)")
    uniform = result.uniform()
    if uniform and strategy != "uniform":
        ax.scatter([x(p) for p in uniform], [p.val_accuracy for p in uniform], marker="s",
                   color="#ff7f0e", zorder=3, label="best uniform policy per budget")
    if eight_x is not None:
        ax.scatter([eight_x], [result.eight_bit_accuracy], marker="*", s=120, color="#d62728", zorder=3,
                   label="uniform 8-bit")
    ax.axhline(result.float_accuracy, color="#2ca02c", linestyle="--", linewidth=1,
               label=f"float ({metric.format(result.float_accuracy)})")
    for p in searched:
        ax.annotate(budget_label(p.budget), (x(p), p.val_accuracy), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color="#1f77b4")
    ax.set_ylabel(f"validation {value_label(metric)}{'' if metric.higher_is_better else ', lower is better'}")
    values = [p.val_accuracy for p in result.points] + [result.eight_bit_accuracy, result.float_accuracy]
    if not metric.higher_is_better and max(values) > 4 * min(values):
        ax.set_yscale("log")  # a few low-bit policies can be orders of magnitude worse than the rest
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if metric.higher_is_better else "upper right", fontsize=7)


def write_sweep_outputs(result: SweepResult) -> dict[str, Path]:
    directory = result.output_dir
    files = {"pareto": write_text_atomic(directory / PARETO_CSV, pareto_csv(result)),
             "summary": write_text_atomic(directory / SUMMARY, summary_markdown(result))}
    figure = write_pareto_figure(directory / PARETO_FIGURE, result)
    if figure is not None:
        files["figure"] = figure
    return files
