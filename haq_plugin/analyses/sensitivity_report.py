"""Files ``haq-plugin sensitivity`` writes, each atomically.

==================  ================================================================
``sensitivity.csv``  one row per layer: cost share, accuracy with weights at each
                     width (``w2``, ``w3``, ..., ``w8``), then with input activations
                     at each width (``a2``, ..., ``a8``)
``sensitivity.png``  heatmaps of the accuracy drop from uniform 8-bit, layers by bits,
                     weights and activations side by side
``sensitivity.md``   the same table in markdown, with the references
==================  ================================================================

With weight-only quantization there are no ``aB`` columns (and one heatmap);
with ``metric="perplexity"`` the values are perplexities and the heatmap shows
the rise over uniform 8-bit; with ``decisions`` other than ``layer`` a row is
one decision unit (its ``layers`` column lists the members).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from haq_plugin.storage.files import write_text_atomic, write_via_temp
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.engine.metric import Metric, metric_named
from haq_plugin.engine.space import KEPT_BITS

TARGETS = ("weights", "activations")
UNIT_NOUNS = {"layer": "layer", "block": "block", "role": "role"}


CSV_FILE = "sensitivity.csv"
FIGURE = "sensitivity.png"
MARKDOWN = "sensitivity.md"



@dataclass
class LayerSensitivity:
    """One layer's (or decision unit's) values of the metric by bit width, weights and input activations
    separately; ``activations`` is empty where only weights are quantized.  ``members`` are the unit's layers."""

    index: int
    name: str
    describe: str
    cost_share: float
    weights: dict[int, float]
    activations: dict[int, float]
    members: tuple[str, ...] = ()


@dataclass
class SensitivityResult:
    """The per-layer table, the reference accuracies and the run's size and time."""

    layers: list[LayerSensitivity]
    bits: tuple[int, ...]
    constraint: str
    hardware: str
    backend: str
    eight_bit_accuracy: float
    float_accuracy: float
    evaluations: int
    seconds: float
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    metric: str = "accuracy"
    decisions: str = "layer"
    targets: tuple[str, ...] = TARGETS

    @property
    def columns(self) -> tuple[int, ...]:
        """The bit widths of the table: the measured ones and the 8-bit reference."""
        return (*self.bits, KEPT_BITS)

    @property
    def measure(self) -> Metric:
        """The metric of the values (accuracy in percent, or perplexity where lower is better)."""
        return metric_named(self.metric)

    @property
    def unit_noun(self) -> str:
        """``layer``, ``block`` or ``role``: what one row is."""
        return UNIT_NOUNS[self.decisions]

    def loss(self, value: float) -> float:
        """How much worse ``value`` is than uniform 8-bit: accuracy points lost, or perplexity gained."""
        reference = self.eight_bit_accuracy
        return reference - value if self.measure.higher_is_better else value - reference


def _headers(result: SensitivityResult) -> list[str]:
    return [f"{target[0]}{b}" for target in result.targets for b in result.columns]


def _values(result: SensitivityResult) -> list[list[float]]:
    return [[getattr(row, target)[b] for target in result.targets for b in result.columns] for row in result.layers]


def _grouped(result: SensitivityResult) -> bool:
    return result.decisions != "layer"


def sensitivity_csv(result: SensitivityResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    grouped = _grouped(result)
    writer.writerow(["index", "unit" if grouped else "layer", *(["layers"] if grouped else []), "cost_share",
                     *_headers(result)])
    for row, values in zip(result.layers, _values(result)):
        writer.writerow([row.index, row.name, *([";".join(row.members)] if grouped else []),
                         f"{row.cost_share:.6f}", *(f"{v:.4f}" for v in values)])
    return out.getvalue()


def sensitivity_markdown(result: SensitivityResult) -> str:
    """The table for reading: the metric per layer (or unit) and width, and its share of the 8-bit cost."""
    metric, noun = result.measure, result.unit_noun
    headers = ["#", noun, "shape" if noun == "layer" else "size", f"{result.constraint} share"] + _headers(result)
    rows = [[row.index, f"`{row.name}`", row.describe, f"{row.cost_share * 100:.1f}%",
             *(f"{v:.2f}" for v in values)] for row, values in zip(result.layers, _values(result))]
    if metric.higher_is_better:
        value = "Accuracy (%)" if metric.unit == "%" else metric.name.capitalize()
    else:
        value = f"{metric.name.capitalize()} (lower is better)"
    what = ("weights (`wB`) or input activations (`aB`)" if "activations" in result.targets
            else "weights (`wB`; weight-only quantization, activations stay float)")
    unit = f"one {noun}'s" if noun == "layer" else f"one {noun}'s layers'"
    return "\n".join([
        f"# Per-{noun} sensitivity", "",
        f"{value} with {unit} {what} at B bits and every other "
        f"layer at 8 bits; backend '{result.backend}', {result.constraint} shares on hardware '{result.hardware}'. "
        f"Uniform 8-bit {metric.name} {metric.format(result.eight_bit_accuracy)} (the 8-bit columns), float "
        f"{metric.format(result.float_accuracy)}; {result.evaluations} evaluations in {result.seconds:.1f} s.", "",
        markdown_table(headers, rows),
    ])


def write_sensitivity_figure(path: Path, result: SensitivityResult) -> Path | None:
    """Two heatmaps (weights, activations) of the accuracy drop; matplotlib object API with Agg."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("haq-plugin: matplotlib is not installed; skipping sensitivity.png "
              "(pip install 'haq-plugin[plot]').", file=sys.stderr)
        return None
    columns = result.columns
    n = len(result.layers)
    drops = {target: np.array([[result.loss(getattr(row, target)[b]) for b in columns]
                               for row in result.layers]) for target in result.targets}
    top = max(1.0, max(float(d.max()) for d in drops.values()))
    panels = len(result.targets)
    fig = Figure(figsize=(3.0 + 0.9 * len(columns) * panels, 1.6 + 0.3 * n), dpi=110)
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(1, panels, sharey=True)))
    for ax, (target, drop) in zip(axes, drops.items()):
        image = ax.imshow(drop, cmap="Reds", vmin=0.0, vmax=top, aspect="auto")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([f"{b}" for b in columns])
        ax.set_xlabel(f"{target[:-1]} bits")
        ax.set_title(f"{target} at B bits", fontsize=9)
        for (i, j), value in np.ndenumerate(drop):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6,
                    color="white" if value > top * 0.6 else "black")
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels([f"{row.name} ({row.cost_share * 100:.0f}%)" for row in result.layers], fontsize=7)
    label = ("accuracy drop from uniform 8-bit (points)" if result.measure.higher_is_better
             else f"{result.metric} rise over uniform 8-bit")
    fig.colorbar(image, ax=axes, label=label, shrink=0.8)
    fig.suptitle(f"Per-{result.unit_noun} sensitivity ({result.backend}; label: {result.constraint} share on "
                 f"{result.hardware})", fontsize=9)
    return write_via_temp(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def write_sensitivity_outputs(result: SensitivityResult) -> dict[str, Path]:
    directory = result.output_dir
    if directory is None:
        raise ValueError("the sensitivity run has no output directory")
    files = {"csv": write_text_atomic(directory / CSV_FILE, sensitivity_csv(result)),
             "markdown": write_text_atomic(directory / MARKDOWN, sensitivity_markdown(result))}
    figure = write_sensitivity_figure(directory / FIGURE, result)
    if figure is not None:
        files["figure"] = figure
    return files
