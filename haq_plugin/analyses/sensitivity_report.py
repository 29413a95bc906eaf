"""Files ``haq-plugin sensitivity`` writes, each atomically.

==================  ================================================================
``sensitivity.csv``  one row per layer: cost share, accuracy with weights at each
                     width (``w2``, ``w3``, ..., ``w8``), then with input activations
                     at each width (``a2``, ..., ``a8``), then ``effective``: a flag
                     such as ``a2_effective=8`` for each entry the backend ran at
                     other bits, whose value cell is left empty
``sensitivity.png``  heatmaps of the accuracy drop from uniform 8-bit, layers by bits,
                     weights and activations side by side; an entry run at other
                     bits is a grey, hatched cell labelled with those bits
``sensitivity.md``   the same table in markdown, with the references; an entry run
                     at other bits reads ``(8)†``, explained under the table
==================  ================================================================

Such an entry measured the bits the backend applied, not its column's (see
:mod:`haq_plugin.analyses.sensitivity`), so no output presents it as a drop of
zero; a unit whose layers got different widths lists them all (``2/8``).

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
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from haq_plugin.storage.files import write_text_atomic, write_via_temp
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.engine.metric import Metric, metric_named
from haq_plugin.engine.space import KEPT_BITS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

TARGETS = ("weights", "activations")
UNIT_NOUNS = {"layer": "layer", "block": "block", "role": "role"}


CSV_FILE = "sensitivity.csv"
FIGURE = "sensitivity.png"
MARKDOWN = "sensitivity.md"
#: The mark of an entry that ran at other bits than its column's.
OTHER_BITS = "\u2020"
#: The heatmap's colour for those entries (hatched over).
UNMEASURED_GREY = "#d9d9d9"


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
    #: target -> width -> the distinct widths the backend really gave the members (smallest first).
    effective: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)
    #: target -> width -> the layers outside the unit that the backend changed along (where it did).
    also_changed: dict[str, dict[int, tuple[str, ...]]] = field(default_factory=dict)

    def record_applied(self, target: str, width: int, asked: Mapping[str, tuple[int, int]],
                       applied: Mapping[str, tuple[int, int]]) -> None:
        """Keep what the backend really applied when this entry asked for ``asked``.

        Only the entry's target counts: the other half of each pair stays at 8 bits,
        or is float for weight-only quantization, whatever a backend reports for it.
        """
        slot = TARGETS.index(target)
        self.effective.setdefault(target, {})[width] = tuple(sorted({applied[name][slot] for name in self.members}))
        others = tuple(name for name, pair in asked.items()
                       if name not in self.members and applied[name][slot] != pair[slot])
        if others:
            self.also_changed.setdefault(target, {})[width] = others

    def applied(self, target: str, width: int) -> tuple[int, ...]:
        """The widths the backend gave this entry's layers; ``(width,)`` where it gave what was asked."""
        return self.effective.get(target, {}).get(width, (width,))

    def changed_along(self, target: str, width: int) -> tuple[str, ...]:
        """Layers outside the unit whose bits the backend changed for this entry (one shared observer)."""
        return self.also_changed.get(target, {}).get(width, ())

    def measured(self, target: str, width: int) -> bool:
        """Whether the entry ran as asked: its layers at its column's width, every other layer untouched."""
        return self.applied(target, width) == (width,) and not self.changed_along(target, width)

    def applied_text(self, target: str, width: int) -> str:
        """The applied widths as the outputs write them: ``8``, or ``2/8`` for a unit split between two."""
        return "/".join(str(bits) for bits in self.applied(target, width))


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

    def entries(self) -> list[tuple[str, int]]:
        """Every (target, width) of a row, in column order."""
        return [(target, bits) for target in self.targets for bits in self.columns]

    def unmeasured(self) -> list[tuple[LayerSensitivity, str, int]]:
        """The (row, target, width) entries the backend ran at other bits than asked."""
        return [(row, target, bits) for row in self.layers for target, bits in self.entries()
                if not row.measured(target, bits)]

    def loss(self, value: float) -> float:
        """How much worse ``value`` is than uniform 8-bit: accuracy points lost, or perplexity gained."""
        reference = self.eight_bit_accuracy
        return reference - value if self.measure.higher_is_better else value - reference


def _headers(result: SensitivityResult) -> list[str]:
    return [f"{target[0]}{b}" for target, b in result.entries()]


def _cells(result: SensitivityResult, row: LayerSensitivity, measured: str,
           other: Callable[[LayerSensitivity, str, int], str]) -> list[str]:
    """A row's values formatted with ``measured``, and ``other(row, target, width)`` where the entry ran otherwise."""
    return [measured.format(getattr(row, target)[b]) if row.measured(target, b) else other(row, target, b)
            for target, b in result.entries()]


def _markdown_mark(row: LayerSensitivity, target: str, width: int) -> str:
    """``(8)†``, or ``(2; also fc)†`` where the backend changed another layer's bits with this entry's."""
    along = row.changed_along(target, width)
    also = f"; also {', '.join(along)}" if along else ""
    return f"({row.applied_text(target, width)}{also}){OTHER_BITS}"


def _entry_flags(row: LayerSensitivity, target: str, width: int) -> list[str]:
    """``a2_effective=8``, with ``a2_also=fc`` where layers outside the row changed as well."""
    column = f"{target[0]}{width}"
    along = row.changed_along(target, width)
    flags = [f"{column}_effective={row.applied_text(target, width)}"]
    if along:
        flags.append(f"{column}_also={'/'.join(along)}")
    return flags


def effective_flags(result: SensitivityResult, row: LayerSensitivity) -> str:
    """The CSV's ``effective`` cell: the flags of every entry run otherwise than asked, ``;``-separated."""
    return ";".join(flag for target, b in result.entries() if not row.measured(target, b)
                    for flag in _entry_flags(row, target, b))


def _grouped(result: SensitivityResult) -> bool:
    return result.decisions != "layer"


def sensitivity_csv(result: SensitivityResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    grouped = _grouped(result)
    writer.writerow(["index", "unit" if grouped else "layer", *(["layers"] if grouped else []), "cost_share",
                     *_headers(result), "effective"])
    for row in result.layers:
        writer.writerow([row.index, row.name, *([";".join(row.members)] if grouped else []),
                         f"{row.cost_share:.6f}", *_cells(result, row, "{:.4f}", lambda *_: ""),
                         effective_flags(result, row)])
    return out.getvalue()


def sensitivity_markdown(result: SensitivityResult) -> str:
    """The table for reading: the metric per layer (or unit) and width, and its share of the 8-bit cost."""
    metric, noun = result.measure, result.unit_noun
    headers = ["#", noun, "shape" if noun == "layer" else "size", f"{result.constraint} share"] + _headers(result)
    rows = [[row.index, f"`{row.name}`", row.describe, f"{row.cost_share * 100:.1f}%",
             *_cells(result, row, "{:.2f}", _markdown_mark)] for row in result.layers]
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
        markdown_table(headers, rows), *_other_bits_note(result),
    ])


def _other_bits_note(result: SensitivityResult) -> list[str]:
    """The footnote of the entries marked with :data:`OTHER_BITS`, or nothing when every entry was measured."""
    others = result.unmeasured()
    if not others:
        return []
    total = len(result.layers) * len(result.entries())
    return ["", f"{OTHER_BITS} Not measured ({len(others)} of {total} entries): the backend did not run the entry as "
            "asked. It gave the row's layers the bits in parentheses instead of the column's, or also changed the "
            "layers named after 'also', so the value says nothing about the asked width and is no drop of zero. A "
            "backend does so where a layer cannot have bits of its own: torch.ao's FX mode has one input observer "
            "for a tensor that several layers read (a residual block's input, the network input and the first "
            "layer's output), which stays at 8 bits while another layer it feeds does; torchao's PT2E gives such "
            "layers one input quantizer, which takes the bits of the last of them. A unit whose layers got "
            "different widths lists them (2/8)."]


def write_sensitivity_figure(path: Path, result: SensitivityResult) -> Path | None:
    """Two heatmaps (weights, activations) of the accuracy drop; matplotlib object API with Agg."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        print("haq-plugin: matplotlib is not installed; skipping sensitivity.png "
              "(pip install 'haq-plugin[plot]').", file=sys.stderr)
        return None
    columns = result.columns
    n = len(result.layers)
    drops = {target: np.array([[result.loss(getattr(row, target)[b]) if row.measured(target, b) else np.nan
                                for b in columns] for row in result.layers]) for target in result.targets}
    top = max(1.0, max(float(np.nanmax(d)) for d in drops.values()))  # the 8-bit column is always measured
    colours = colormaps["Reds"].with_extremes(bad=UNMEASURED_GREY)
    panels = len(result.targets)
    fig = Figure(figsize=(3.0 + 0.9 * len(columns) * panels, 1.6 + 0.3 * n), dpi=110)
    FigureCanvasAgg(fig)
    axes = list(np.atleast_1d(fig.subplots(1, panels, sharey=True)))
    for ax, (target, drop) in zip(axes, drops.items()):
        image = ax.imshow(np.ma.masked_invalid(drop), cmap=colours, vmin=0.0, vmax=top, aspect="auto")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([f"{b}" for b in columns])
        ax.set_xlabel(f"{target[:-1]} bits")
        ax.set_title(f"{target} at B bits", fontsize=9)
        for (i, j), value in np.ndenumerate(drop):
            if np.isnan(value):
                _mark_other_bits(ax, (i, j), result.layers[i], target, columns[j])
            else:
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6,
                        color="white" if value > top * 0.6 else "black")
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels([f"{row.name} ({row.cost_share * 100:.0f}%)" for row in result.layers], fontsize=7)
    label = ("accuracy drop from uniform 8-bit (points)" if result.measure.higher_is_better
             else f"{result.metric} rise over uniform 8-bit")
    fig.colorbar(image, ax=axes, label=label, shrink=0.8)
    if result.unmeasured():
        fig.legend(handles=[Patch(facecolor=UNMEASURED_GREY, edgecolor="grey", hatch="///",
                                  label="not measured: the backend applied the bits shown instead "
                                        "(+: and changed other layers too)")],
                   loc="upper center", fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(f"Per-{result.unit_noun} sensitivity ({result.backend}; label: {result.constraint} share on "
                 f"{result.hardware})", fontsize=9)
    return write_via_temp(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def _mark_other_bits(ax: "Axes", cell: tuple[int, int], row: LayerSensitivity, target: str, width: int) -> None:
    """Hatch ``cell``, whose entry ran otherwise than asked, and label it with the bits it ran at
    (``+`` where other layers changed too)."""
    from matplotlib.patches import Rectangle

    i, j = cell
    along = "+" if row.changed_along(target, width) else ""
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="grey", linewidth=0))
    ax.text(j, i, f"={row.applied_text(target, width)}{along}", ha="center", va="center", fontsize=6, color="black")


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
