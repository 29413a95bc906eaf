"""The reports of a search, written from the typed fields of a :class:`SearchResult`.

==================  ===============================================================
``policy.json``     the best policy with its provenance (:meth:`Policy.save`)
backend export      what the backend needs to apply it (``backend.export_filename``)
``episodes.csv``    one row per episode: bits, cost, accuracy, reward, noise
``summary.md``      per-layer table and totals against budget, float and uniform
``policy.png``      per-layer bits with each layer's latency share (needs matplotlib)
==================  ===============================================================

``checkpoint.pt`` (:mod:`haq_plugin.storage.checkpoint`) lies beside them.  Every file is
written through a temporary file and a rename, so none is ever half-written.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from haq_plugin.storage.checkpoint import CHECKPOINT
from haq_plugin.engine.backend_faults import contained
from haq_plugin.storage.files import write_text_atomic, write_via_temp
from haq_plugin.api.quantize_mode import WEIGHTS_ONLY
from haq_plugin.engine.results import EpisodeRecord, SearchResult

if TYPE_CHECKING:
    from haq_plugin.api.backend import QuantBackend

POLICY = "policy.json"
EPISODES = "episodes.csv"
SUMMARY = "summary.md"
FIGURE = "policy.png"
CSV_COLUMNS = ("episode", "strategy", "bits", "cost", "cost_fraction", "accuracy", "reward", "sigma",
               "is_best", "seconds", "eval_seconds")


# -- the text summary -------------------------------------------------------------------
def summary_text(result: SearchResult) -> str:
    """A few lines: what was searched, what was found, and how it compares."""
    b, unit, best, u, s = result.budget, result.unit, result.best, result.uniform, result.settings
    runs = f"{len(result.history)} of {s.episodes} episodes" if result.interrupted else \
        f"{len(result.history)} episode(s)"
    return "\n".join([
        f"Strategy {s.strategy} ({runs}, seed {s.seed}) on hardware '{result.hardware.name}' "
        f"with backend '{result.backend.name}'{' [interrupted]' if result.interrupted else ''}.",
        f"Budget: {b.constraint} <= {b.fraction:g} x 8-bit = {b.absolute:.6g} {unit}.",
        f"Best policy (episode {best.episode}): {_against(result, best.accuracy, result.float_accuracy, 'float')}, "
        f"{b.constraint} {best.cost_fraction:.4f} x 8-bit ({best.cost:.6g} {unit}).",
        *_bits_per_weight_line(result),
        _hardware_line(result, best.bits),
        "No uniform policy fits the budget." if u is None else
        f"Best uniform policy within budget: {_uniform_name(result, u.bits)}, {_value(result, u.accuracy)}, "
        f"{b.constraint} {u.cost_fraction:.4f} x 8-bit; mixed precision {_difference(result, best.accuracy, u.accuracy)}.",
    ])


def _uniform_name(result: SearchResult, bits: int) -> str:
    """``w4/a4``, or ``w4 (weights only)`` when activations stay float."""
    return f"w{bits} (weights only)" if result.settings.quantize == "weights" else f"w{bits}/a{bits}"


def _value(result: SearchResult, value: float) -> str:
    """``accuracy 97.50%`` or ``perplexity 15.23``."""
    return f"{result.metric.name} {result.metric.format(value)}"


def _difference(result: SearchResult, value: float, other: float) -> str:
    """``+1.25 points`` of accuracy, or ``x0.912`` of perplexity (below 1: better)."""
    if result.metric.higher_is_better:
        return f"{value - other:+.2f} points"
    return f"x{value / other:.3f} perplexity"


def _against(result: SearchResult, value: float, reference: float, name: str) -> str:
    """``accuracy 97.50% (float 98.00%, -0.50)`` or ``perplexity 15.23 (float 13.33, x1.143)``."""
    metric = result.metric
    change = f"{value - reference:+.2f}" if metric.higher_is_better else f"x{value / reference:.3f}"
    return f"{_value(result, value)} ({name} {metric.format(reference)}, {change})"


def _bits_per_weight_line(result: SearchResult) -> list[str]:
    """Under a bits-per-weight budget: the policy's stored bits per weight of the searched layers."""
    if result.settings.bits_per_weight is None:
        return []
    return [f"Stored size: {result.bits_per_weight:.3f} bits per weight of the searched layers, scales included "
            f"(budget {result.settings.bits_per_weight:g}bpw)."]


def _hardware_line(result: SearchResult, bits: Sequence[tuple[int, int]]) -> str:
    """Latency and energy of a policy against the uniform 8-bit policy, whatever the constraint was."""
    table = result.cost_table
    parts = []
    for metric, unit in (("latency", "s"), ("energy", "J")):
        if metric == "energy" and table.energy is None:
            parts.append("energy: no energy model")
            continue
        cost, eight = table.policy_cost(metric, bits), table.uniform_cost(metric, 8)
        parts.append(f"{metric} {cost:.4g} {unit} = {cost / eight:.3f} x 8-bit ({eight / cost:.2f}x lower)")
    return "Against uniform 8-bit: " + "; ".join(parts) + "."


# -- episodes.csv -----------------------------------------------------------------------
def format_bits(bits: Sequence[Sequence[int]]) -> str:
    """Per-layer bits as ``w/a`` pairs joined by spaces, e.g. ``8/8 4/6 3/5``."""
    return " ".join(f"{w}/{a}" for w, a in bits)


def episodes_csv(history: Sequence[EpisodeRecord], metric: str = "accuracy") -> str:
    """The CSV of ``history``; its ``accuracy`` column is named after the metric (e.g. ``perplexity``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([metric if column == "accuracy" else column for column in CSV_COLUMNS])
    for r in history:
        writer.writerow([r.episode, r.strategy, format_bits(r.bits), f"{r.cost:.6g}", f"{r.cost_fraction:.6f}",
                         f"{r.accuracy:.4f}", f"{r.reward:.6f}", "" if r.sigma is None else f"{r.sigma:.6g}",
                         int(r.is_best), f"{r.seconds:.4f}", f"{r.eval_seconds:.4f}"])
    return out.getvalue()


def write_episodes_csv(directory: Path, history: Sequence[EpisodeRecord], metric: str = "accuracy") -> Path:
    return write_text_atomic(directory / EPISODES, episodes_csv(history, metric))


# -- summary.md -------------------------------------------------------------------------
def layer_shares(result: SearchResult, metric: str) -> np.ndarray | None:
    """Each layer's share of the policy's total ``metric`` (latency or energy), or None if unavailable."""
    table = result.cost_table
    values = table.latency if metric == "latency" else table.energy
    if values is None:
        return None
    bits = result.policy.as_list()
    per_layer = np.array([values[i, table.index(w), table.index(a)] for i, (w, a) in enumerate(bits)])
    total = per_layer.sum()
    return per_layer / total if total > 0 else np.zeros_like(per_layer)


def effective_act_bits(backend: "QuantBackend", result: SearchResult) -> dict[str, int] | None:
    """The activation bits each layer's input really gets from ``backend``, where it can tell.

    A backend may quantize a layer's input with other bits than the policy's;
    torch.ao's FX mode does, where one observer feeds several layers.  Such a
    backend overrides :meth:`~haq_plugin.api.capabilities.BackendCapabilities.effective_act_bits`
    (layer name -> bits); the default's None means "the policy's bits".
    """
    method = getattr(backend, "effective_act_bits", None)  # a duck-typed backend may lack it
    if not callable(method) or getattr(backend, "quantize", None) == WEIGHTS_ONLY:  # float activations
        return None
    effective = method(result.policy.bits)
    return None if effective is None else dict(effective)


def summary_markdown(result: SearchResult, effective: dict[str, int] | None = None) -> str:
    """The human-readable report: settings, per-layer table, totals and comparisons.

    ``effective`` (see :func:`effective_act_bits`) adds the backend's real
    activation bits to the layers where they differ from the policy's.
    """
    budget, best, uniform, unit = result.budget, result.best, result.uniform, result.unit
    latency, energy = layer_shares(result, "latency"), layer_shares(result, "energy")
    effective = effective or {}
    differing = [layer.name for layer, (_, a) in zip(result.layers, result.policy.as_list())
                 if effective.get(layer.name, a) != a]
    lines = [
        "# HAQ mixed-precision search", "",
        result.summary, "",
        "## Per-layer policy", "",
        "| # | layer | shape | W bits | A bits | latency share | energy share |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for i, (layer, (w, a)) in enumerate(zip(result.layers, result.policy.as_list())):
        lat = f"{latency[i] * 100:.1f}%" if latency is not None else "n/a"
        ene = f"{energy[i] * 100:.1f}%" if energy is not None else "n/a"
        a_text = f"{a} ({effective[layer.name]} effective)" if layer.name in differing else str(a)
        lines.append(f"| {i} | `{layer.name}` | {layer.describe()} | {w} | {a_text} | {lat} | {ene} |")
    if differing:
        lines += ["", f"Backend '{result.backend.name}' quantizes the input of {', '.join(differing)} with other "
                  "bits than the policy's (one observer feeds several layers; see its export file): '(N "
                  "effective)' gives the bits the input really gets. Costs are those of the policy's bits."]
    lines += [
        "", "## Totals", "",
        f"| | {budget.constraint} ({unit}) | x 8-bit | {result.metric.name}{' (%)' * result.metric.higher_is_better} |",
        "|---|---:|---:|---:|",
        f"| budget | {budget.absolute:.6g} | {budget.fraction:.4f} | |",
        f"| searched policy | {best.cost:.6g} | {best.cost_fraction:.4f} | {best.accuracy:.2f} |",
        f"| uniform {uniform.bits}-bit (best uniform within budget) | {uniform.cost:.6g} | "
        f"{uniform.cost_fraction:.4f} | {uniform.accuracy:.2f} |" if uniform else
        "| uniform (none fits the budget) | | | |",
        f"| 8-bit (w8/a8) | {budget.reference:.6g} | 1.0000 | |",
        f"| float | | | {result.float_accuracy:.2f} |",
        "",
        f"{result.metric.name.capitalize()} against float: {_difference(result, best.accuracy, result.float_accuracy)}; "
        "against the " + (f"best uniform policy within the same budget: "
                          f"{_difference(result, best.accuracy, uniform.accuracy)}."
                          if uniform else "no uniform policy fits the same budget."),
        "",
        "## Settings", "",
        f"- hardware: `{result.hardware.name}` ({_config_text(result.hardware.config)})",
        f"- backend: `{result.backend.name}` ({_config_text(result.backend.config)})",
    ]
    lines += [f"- {key}: {value}" for key, value in _settings_lines(result)]
    return "\n".join(lines) + "\n"


def _settings_lines(result: SearchResult) -> list[tuple[str, Any]]:
    settings = result.settings.to_dict()
    ddpg = settings.pop("ddpg")
    settings.pop("float_accuracy")
    settings.update(allowed_bits=list(result.allowed_bits), episodes_run=len(result.history))
    lines = sorted(settings.items())
    if result.settings.strategy == "ddpg":
        lines.append(("ddpg", _config_text(ddpg)))
    return lines


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items())) or "defaults"


# -- policy.png -------------------------------------------------------------------------
def write_policy_figure(path: Path, result: SearchResult) -> Path | None:
    """Bars of weight bits (up) and activation bits (down) per layer, with latency share.

    The layout follows HAQ's policy figures.  Uses matplotlib's object API with
    the Agg canvas so that it never touches pyplot's global state or a display.
    Returns None (after a one-line notice) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("haq-plugin: matplotlib is not installed; skipping policy.png "
              "(pip install 'haq-plugin[plot]').", file=sys.stderr)
        return None
    bits = np.array(result.policy.as_list())
    x = np.arange(len(bits))
    depthwise = np.array([layer.is_depthwise for layer in result.layers])
    fig = Figure(figsize=(max(6.0, 0.28 * len(bits) + 2.0), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors_w = np.where(depthwise, "#1f77b4", "#aec7e8")
    colors_a = np.where(depthwise, "#ff7f0e", "#ffbb78")
    ax.bar(x, bits[:, 0], color=colors_w, label="weight bits (dark: depthwise)")
    ax.bar(x, -bits[:, 1], color=colors_a, label="activation bits (dark: depthwise)")
    top = int(bits.max())
    ticks = range(-top, top + 1, 2 if top > 4 else 1)
    ax.set_ylim(-top - 1, top + 3)  # headroom for the legends
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(abs(t)) for t in ticks])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("bits (weights up, activations down)")
    ax.set_xticks(x)
    ax.tick_params(axis="x", labelsize=7)
    shares = layer_shares(result, "latency")
    if shares is not None:
        ax2 = ax.twinx()
        ax2.plot(x, shares * 100, color="#2ca02c", marker="o", markersize=3, linewidth=1,
                 label="latency share (%)")
        ax2.set_ylabel("latency share (%)")
        ax2.set_ylim(0, max(1.0, float(shares.max() * 100) * 1.4))
        ax2.legend(loc="upper right", fontsize=7)
    ax.set_title(f"{result.hardware.name}, {result.budget.constraint} budget {result.budget.fraction:g} "
                 f"x 8-bit: {_value(result, result.accuracy)}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return write_via_temp(path, lambda tmp: fig.savefig(tmp, format="png"))


# -- everything at once -----------------------------------------------------------------
def write_search_outputs(result: SearchResult, backend: "QuantBackend") -> dict[str, Path]:
    """Write the final files of a finished search into ``result.output_dir``; return them by kind."""
    directory = result.output_dir
    if directory is None:
        raise ValueError("the search has no output directory")
    files = {"policy": result.policy.save(directory / POLICY)}
    with contained(backend, "export"):
        files["export"] = write_via_temp(directory / backend.export_filename,
                                         lambda tmp: backend.export(result.policy, tmp))
    files["episodes"] = write_episodes_csv(directory, result.history, result.settings.metric)
    files["summary"] = write_text_atomic(directory / SUMMARY,
                                         summary_markdown(result, effective_act_bits(backend, result)))
    figure = write_policy_figure(directory / FIGURE, result)
    if figure is not None:
        files["figure"] = figure
    if (directory / CHECKPOINT).exists():
        files["checkpoint"] = directory / CHECKPOINT
    return files
