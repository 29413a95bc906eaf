"""Files ``haq-plugin sensitivity`` writes, each atomically.

==================  ================================================================
``sensitivity.csv``  one row per layer: cost share, accuracy with weights at each
                     width (``w2``, ``w3``, ..., ``w8``), then with input activations
                     at each width (``a2``, ..., ``a8``)
``sensitivity.png``  heatmaps of the accuracy drop from uniform 8-bit, layers by bits,
                     weights and activations side by side
``sensitivity.md``   the same table in markdown, with the references
==================  ================================================================

The records the files are written from (:class:`LayerSensitivity`, :class:`SensitivityResult`) are
defined here and returned by :func:`haq_plugin.analyses.sensitivity.sensitivity`.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from haq_plugin.storage.files import write_text_atomic, write_via_temp
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.engine.space import KEPT_BITS

CSV_FILE = "sensitivity.csv"
FIGURE = "sensitivity.png"
MARKDOWN = "sensitivity.md"


@dataclass
class LayerSensitivity:
    """One layer's accuracies (percent) by bit width, its weights and its input activations separately."""

    index: int
    name: str
    describe: str
    cost_share: float
    weights: dict[int, float]
    activations: dict[int, float]


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

    @property
    def columns(self) -> tuple[int, ...]:
        """The bit widths of the table: the measured ones and the 8-bit reference."""
        return (*self.bits, KEPT_BITS)


def _headers(result: SensitivityResult) -> list[str]:
    return ([f"w{b}" for b in result.columns] + [f"a{b}" for b in result.columns])


def _values(result: SensitivityResult) -> list[list[float]]:
    return [[row.weights[b] for b in result.columns] + [row.activations[b] for b in result.columns]
            for row in result.layers]


def sensitivity_csv(result: SensitivityResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "layer", "cost_share", *_headers(result)])
    for row, values in zip(result.layers, _values(result)):
        writer.writerow([row.index, row.name, f"{row.cost_share:.6f}", *(f"{v:.4f}" for v in values)])
    return out.getvalue()


def sensitivity_markdown(result: SensitivityResult) -> str:
    """The table for reading: accuracy (%) per layer and width, and the layer's share of the 8-bit cost."""
    headers = ["#", "layer", "shape", f"{result.constraint} share"] + _headers(result)
    rows = [[row.index, f"`{row.name}`", row.describe, f"{row.cost_share * 100:.1f}%",
             *(f"{v:.2f}" for v in values)] for row, values in zip(result.layers, _values(result))]
    return "\n".join([
        "# Per-layer sensitivity", "",
        f"Accuracy (%) with one layer's weights (`wB`) or input activations (`aB`) at B bits and every other "
        f"layer at 8 bits; backend '{result.backend}', {result.constraint} shares on hardware '{result.hardware}'. "
        f"Uniform 8-bit accuracy {result.eight_bit_accuracy:.2f}% (the 8-bit columns), float "
        f"{result.float_accuracy:.2f}%; {result.evaluations} evaluations in {result.seconds:.1f} s.", "",
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
    drops = {target: np.array([[result.eight_bit_accuracy - getattr(row, target)[b] for b in columns]
                               for row in result.layers]) for target in ("weights", "activations")}
    top = max(1.0, max(float(d.max()) for d in drops.values()))
    fig = Figure(figsize=(3.0 + 0.9 * len(columns) * 2, 1.6 + 0.3 * n), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
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
    fig.colorbar(image, ax=list(axes), label="accuracy drop from uniform 8-bit (points)", shrink=0.8)
    fig.suptitle(f"Per-layer sensitivity ({result.backend}; label: {result.constraint} share on "
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
