"""Files a sweep writes beside its per-budget folders, each atomically.

==============  ====================================================================
``pareto.csv``  one row per budget and kind of policy (searched, best uniform)
``pareto.png``  accuracy against achieved cost: the searched front, the best uniform
                policy per budget, the uniform 8-bit and the float marks
``summary.md``  the same table for reading, the references and infeasible budgets
==============  ====================================================================

The records the files are written from (:class:`SweepPoint`, :class:`SweepResult`) are defined here
and returned by :func:`haq_plugin.analyses.sweep.sweep`.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haq_plugin.storage.files import write_text_atomic, write_via_temp
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.storage.outputs import POLICY
from haq_plugin.engine.results import SearchResult

PARETO_CSV = "pareto.csv"
PARETO_FIGURE = "pareto.png"
SUMMARY = "summary.md"
CSV_COLUMNS = ("budget", "strategy", "cost_fraction", "val_accuracy", "test_accuracy", "policy_file", "status")


@dataclass
class SweepPoint:
    """One row of ``pareto.csv``: a policy found (or the best uniform one) at one budget.

    ``policy_file`` is relative to the sweep directory; ``status`` says whether
    the budget was searched now, resumed, or kept from an earlier run.
    """

    budget: float
    strategy: str
    cost_fraction: float
    val_accuracy: float
    test_accuracy: float | None
    policy_file: str
    status: str


@dataclass
class SweepResult:
    """Every budget's outcome, the reference accuracies, and where the files went."""

    points: list[SweepPoint]
    infeasible: dict[float, float]
    float_accuracy: float
    eight_bit_accuracy: float
    float_test_accuracy: float | None
    eight_bit_test_accuracy: float | None
    settings: dict[str, Any]
    output_dir: Path
    searches: dict[float, SearchResult] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def searched(self) -> list[SweepPoint]:
        """The searched policies (one per feasible budget), cheapest budget first."""
        return [p for p in self.points if p.strategy == self.settings["search"]["strategy"]]

    def uniform(self) -> list[SweepPoint]:
        """The best uniform policy of each budget where one fits (the searched ones for strategy uniform)."""
        return [p for p in self.points if p.strategy == "uniform"]


def _accuracy(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def pareto_csv(points: list[SweepPoint]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in points:
        writer.writerow([f"{p.budget:g}", p.strategy, f"{p.cost_fraction:.6f}", _accuracy(p.val_accuracy),
                         _accuracy(p.test_accuracy), p.policy_file, p.status])
    return out.getvalue()


def summary_markdown(result: SweepResult) -> str:
    """The sweep for reading: settings, per-budget table, references, infeasible budgets."""
    s = result.settings
    search = s["search"]
    has_test = result.float_test_accuracy is not None
    lines = [
        "# HAQ budget sweep", "",
        f"Strategy {search['strategy']} ({search['episodes']} episodes per budget, seed {search['seed']}) on hardware "
        f"'{s['hardware']['name']}' with backend '{s['backend']['name']}'; {search['constraint']} budgets as "
        "fractions of the uniform 8-bit cost.", "",
    ]
    headers = ["budget", "policy", "cost x 8-bit", "val accuracy (%)"] + (["test accuracy (%)"] if has_test else [])
    headers += ["vs best uniform", "files"]
    uniform = {p.budget: p for p in result.uniform()}
    rows = []
    for p in result.points:
        searched = p.policy_file.endswith(f"/{POLICY}")
        base = uniform.get(p.budget)
        gain = f"{p.val_accuracy - base.val_accuracy:+.2f}" if searched and base and base is not p else ""
        row = [f"{p.budget:g}", p.strategy if searched else "best uniform", f"{p.cost_fraction:.4f}",
               f"{p.val_accuracy:.2f}"] + ([_accuracy(p.test_accuracy, 2)] if has_test else [])
        rows.append(row + [gain, f"`{p.policy_file}` ({p.status})"])
    lines.append(markdown_table(headers, rows))
    ref = f"- uniform 8-bit: cost 1.0000 x 8-bit, val accuracy {result.eight_bit_accuracy:.2f}%"
    ref += f", test {result.eight_bit_test_accuracy:.2f}%" if has_test else ""
    flt = f"- float: val accuracy {result.float_accuracy:.2f}%"
    flt += f", test {result.float_test_accuracy:.2f}%" if has_test else ""
    lines += ["## References", "", ref, flt, ""]
    if result.infeasible:
        lines += ["## Infeasible budgets (skipped)", ""]
        lines += [f"- {budget:g}: the smallest feasible budget is {smallest:.4f}"
                  for budget, smallest in sorted(result.infeasible.items())]
        lines.append("")
    lines += ["Each `budget-*/` folder holds that search's outputs (policy.json, the backend export, episodes.csv, "
              "summary.md, policy.png); `uniform_policy.json` is its best uniform policy.", ""]
    return "\n".join(lines)


def write_pareto_figure(path: Path, result: SweepResult) -> Path | None:
    """Accuracy against achieved cost; matplotlib's object API with the Agg canvas (no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("haq-plugin: matplotlib is not installed; skipping pareto.png (pip install 'haq-plugin[plot]').",
              file=sys.stderr)
        return None
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    searched = sorted(result.searched(), key=lambda p: p.cost_fraction)
    strategy = result.settings["search"]["strategy"]
    ax.plot([p.cost_fraction for p in searched], [p.val_accuracy for p in searched], marker="o", color="#1f77b4",
            label=f"{strategy} search (one per budget)")
    uniform = result.uniform()
    if uniform and strategy != "uniform":
        ax.scatter([p.cost_fraction for p in uniform], [p.val_accuracy for p in uniform], marker="s",
                   color="#ff7f0e", zorder=3, label="best uniform policy per budget")
    ax.scatter([1.0], [result.eight_bit_accuracy], marker="*", s=120, color="#d62728", zorder=3,
               label="uniform 8-bit")
    ax.axhline(result.float_accuracy, color="#2ca02c", linestyle="--", linewidth=1,
               label=f"float ({result.float_accuracy:.2f}%)")
    for p in searched:
        ax.annotate(f"{p.budget:g}", (p.cost_fraction, p.val_accuracy), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color="#1f77b4")
    constraint = result.settings["search"]["constraint"]
    ax.set_xlabel(f"achieved {constraint} (fraction of uniform 8-bit)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{result.settings['hardware']['name']}, {result.settings['backend']['name']}: accuracy against "
                 f"{constraint} (labels: budget)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return write_via_temp(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_sweep_outputs(result: SweepResult) -> dict[str, Path]:
    directory = result.output_dir
    files = {"pareto": write_text_atomic(directory / PARETO_CSV, pareto_csv(result.points)),
             "summary": write_text_atomic(directory / SUMMARY, summary_markdown(result))}
    figure = write_pareto_figure(directory / PARETO_FIGURE, result)
    if figure is not None:
        files["figure"] = figure
    return files
