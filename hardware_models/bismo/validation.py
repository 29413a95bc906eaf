"""Validation of the BISMO model against HAQ's published MobileNet-V2 cloud latency table.

HAQ's authors released one hardware table (MobileNet-V2, cloud, batch 16, units
undocumented) and no simulator.  Only unit-free quantities can be compared with
it: uniform-policy ratios to 8/8 bits, which operand drives each layer's cost,
each layer's share of the network cost, and the per-layer cost surfaces
normalised to their 8/8 cell.  These helpers live apart from the cost model so
that the model module stays about the machine; :mod:`bismo` re-exports them.

What it finds
-------------
:func:`compare_to_reference` compares the model with HAQ's published
MobileNet-V2 cloud latency table (batch 16, units undocumented; the tests load it
from ``tests/data/haq``).  With the defaults, uniform 4/5/6-bit networks cost
0.381/0.514/0.661 of 8/8 bits against the table's 0.397/0.528/0.673, and the
bits that drive each layer's cost (:func:`classify_scaling`) agree on all 53
layers when halving 8-bit operands and on 45 of 53 when halving 2-bit ones.  The
8 others are the 1x1 convolutions on 7x7 maps, which the table makes weight
bound at low activation bits because it fetches weights once per image:
``batch_lowering='per-sample'`` agrees on all 53 at both points.  Writing raw
32-bit accumulators (``output_bits=32``) would make the 4-bit network cost 0.485
of 8/8, far from the table: its authors evidently re-quantized results on chip.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import LayerSpec

REFERENCE_BITS = tuple(range(1, 9))
"""Bit widths of HAQ's table (1 to 8, also BISMO's supported widths)."""
PROBES = {"high": 8, "low": 2}
"""Bit widths at which :func:`classify_scaling` halves each operand: 8 -> 4 and 2 -> 1."""

SCALING_THRESHOLD = 0.5
"""A layer scales with an operand when halving its bits cuts the cost by at least 2**-0.5 (about 29%)."""


def cost_surfaces(model: HardwareModel, layers: Sequence[LayerSpec]) -> np.ndarray:
    """Latency of every layer at weight and activation bits 1..8: ``[layer, w - 1, a - 1]``."""
    pairs = [(w, a) for w in REFERENCE_BITS for a in REFERENCE_BITS]
    n = len(REFERENCE_BITS)
    return np.array([[c.latency_s for c in model.layer_costs(layer, pairs)] for layer in layers]).reshape(-1, n, n)


def classify_scaling(surfaces: np.ndarray, probe: int) -> list[str]:
    """Which bits drive each layer's cost near ``probe`` bits: compute, weights, activations or neither.

    ``surfaces`` is ``[layer, w - 1, a - 1]``.  The exponent of each operand is
    ``log2(cost(p, p) / cost(p/2, p))`` (weights) and ``log2(cost(p, p) / cost(p, p/2))``
    (activations): about 1 for an operand the cost is proportional to, 0 for one it
    ignores.  Both large means ``w * a`` (compute bound).
    """
    p, h = probe - 1, probe // 2 - 1
    by_w = np.log2(surfaces[:, p, p] / surfaces[:, h, p]) >= SCALING_THRESHOLD
    by_a = np.log2(surfaces[:, p, p] / surfaces[:, p, h]) >= SCALING_THRESHOLD
    names = {(True, True): "compute", (True, False): "weights", (False, True): "activations",
             (False, False): "neither"}
    return [names[(bool(w), bool(a))] for w, a in zip(by_w, by_a)]


def uniform_ratios(surfaces: np.ndarray) -> list[float]:
    """Network cost of uniform b-bit policies (b = 1..8) relative to 8/8 bits."""
    totals = [float(surfaces[:, b - 1, b - 1].sum()) for b in REFERENCE_BITS]
    return [t / totals[-1] for t in totals]


def compare_to_reference(table: np.ndarray, model: HardwareModel,
                         layers: Sequence[LayerSpec] | None = None) -> dict[str, Any]:
    """Compare ``model`` with a published ``[layer, w - 1, a - 1]`` latency table (bits 1..8).

    Made for HAQ's MobileNet-V2 cloud table, whose units are undocumented, so only
    unit-free quantities are compared: uniform-policy ratios to 8/8 bits, each
    layer's scaling class at high (8 -> 4) and low (2 -> 1) bits, each layer's
    share of the 8/8 network cost, and the per-layer cost surfaces normalised to
    their 8/8 cell.  ``layers`` defaults to the zoo's MobileNet-V2 at 224x224, the
    network of HAQ's table.
    """
    if layers is None:
        layers = _mobilenet_v2_layers()
    table = np.asarray(table, dtype=np.float64)
    n = len(REFERENCE_BITS)
    if table.shape != (len(layers), n, n):
        raise HaqError(f"reference table has shape {table.shape}; expected ({len(layers)}, {n}, {n}) for "
                       f"{len(layers)} layers at bits 1..{n}.")
    model_s = cost_surfaces(model, layers)
    ref_ratios, model_ratios = uniform_ratios(table), uniform_ratios(model_s)
    patterns = {}
    for label, probe in PROBES.items():
        ref_cls, model_cls = classify_scaling(table, probe), classify_scaling(model_s, probe)
        agree = [r == m for r, m in zip(ref_cls, model_cls)]
        patterns[label] = {"probe_bits": probe, "reference": ref_cls, "model": model_cls,
                           "agreement": sum(agree) / len(agree)}
    ref_share = table[:, -1, -1] / table[:, -1, -1].sum()
    model_share = model_s[:, -1, -1] / model_s[:, -1, -1].sum()
    return {
        "hardware": model.name,
        "layers": [layer.name for layer in layers],
        "bits": list(REFERENCE_BITS),
        "uniform_ratio_model": model_ratios,
        "uniform_ratio_reference": ref_ratios,
        "uniform_ratio_error": [abs(m - r) for m, r in zip(model_ratios, ref_ratios)],
        "patterns": patterns,
        "share_correlation": float(np.corrcoef(ref_share, model_share)[0, 1]),
        "surface_error": float(np.mean(np.abs(model_s / model_s[:, -1:, -1:] - table / table[:, -1:, -1:]))),
    }


def format_comparison(result: dict[str, Any]) -> str:
    """A few lines summarising :func:`compare_to_reference` for reports."""
    lines = [f"{result['hardware']} vs reference ({len(result['layers'])} layers)",
             "uniform b/b cost relative to 8/8:"]
    for b, m, r in zip(result["bits"], result["uniform_ratio_model"], result["uniform_ratio_reference"]):
        lines.append(f"  {b} bit: model {m:.3f}  reference {r:.3f}  diff {m - r:+.3f}")
    for label, p in result["patterns"].items():
        lines.append(f"scaling class agreement at {p['probe_bits']} bits ({label}): {p['agreement']:.0%}")
    lines.append(f"per-layer share of 8/8 cost, correlation: {result['share_correlation']:.3f}")
    lines.append(f"mean |normalised surface difference|: {result['surface_error']:.3f}")
    return "\n".join(lines)


def _mobilenet_v2_layers() -> list[LayerSpec]:
    import torch

    from haq_plugin.tasks import zoo
    from haq_plugin.api.layers import extract_layers

    return extract_layers(zoo.MobileNetV2(), torch.zeros(1, 3, 224, 224))
