"""How a network layer becomes the Bit Fusion simulator's loop nests.

The simulator knows one kind of layer: a dense convolution (a matmul being the
1x1 case), which it runs as the five-loop nest of
:class:`~haq_plugin.hardware_models.bitfusion.rules.LoopNest`.  Dense layers map
onto one nest.  Grouped and depthwise convolutions, which the authors never
simulated, map onto *packs*:

* A pack is ``g`` consecutive groups run as one dense convolution with
  ``g * in/groups`` inputs and ``g * out/groups`` outputs whose weights are
  block-diagonal.  Every output channel still reduces only its own group's
  inputs: the off-diagonal weights are zeros, which Bit Fusion (no sparsity
  support) stores, streams and multiplies like any other weight.
* Packs run one after the other, each with its own schedule, and their
  counters add up.  This is how the authors ran AlexNet's two-group layers: the
  ``conv2_a`` and ``conv2_b`` rows of their sweep are the two groups as separate
  layers, i.e. packs of one group.
* Why pack at all: the array broadcasts each input along a row of N Fusion
  Units and sums each column of them into one output, so a lone depthwise
  channel (one input, one output) occupies a single row and a single column.  A
  pack of ``g`` channels puts them side by side on the diagonal and runs ``g``
  channels in the time of one.
* The pack size is part of the schedule: the candidates are 1 and every power of
  two up to the number of groups whose packed outputs still fit the M columns
  (``g * out/groups <= M``); wider packs only need extra column passes and add
  zero weights.  The search picks, per bit pair, the candidate with the fewest
  cycles, then the least energy (rule 8).  When ``groups`` is not a multiple of
  ``g`` the last pack holds the remaining groups.

Other conventions (non-square layers, dilation, im2col) are documented in
:mod:`haq_plugin.hardware_models.bitfusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

from haq_plugin.hardware_models.bitfusion.rules import LoopNest
from haq_plugin.api.layers import LayerSpec


@dataclass(frozen=True)
class PackPlan:
    """One way to run a layer: ``parts`` lists (nest, how many times it runs)."""

    groups_per_pack: int
    parts: tuple[tuple[LoopNest, int], ...]


def pack_plans(layer: LayerSpec, cols: int, batch: int, grouped_im2col: bool = False) -> list[PackPlan]:
    """Every candidate mapping of ``layer`` (a single plan for dense layers).

    ``grouped_im2col`` runs grouped layers with the im2col dataflow (see :func:`loop_nest`).
    """
    groups = layer.groups
    out_per_group = layer.out_channels // groups
    sizes = [1]
    while sizes[-1] * 2 <= groups and sizes[-1] * 2 * out_per_group <= cols:
        sizes.append(sizes[-1] * 2)
    plans = []
    for g in sizes:
        full, rest = divmod(groups, g)
        parts = [(loop_nest(layer, batch, g, grouped_im2col), full)]
        if rest:
            parts.append((loop_nest(layer, batch, rest, grouped_im2col), 1))
        plans.append(PackPlan(g, tuple(parts)))
    return plans


def loop_nest(layer: LayerSpec, batch: int, groups_per_pack: int = 1, grouped_im2col: bool = False) -> LoopNest:
    """The nest of one pack of ``groups_per_pack`` groups of ``layer``.

    Linear layers are matmuls (K = O = S = 1) and never use im2col.  A dilated
    kernel spans ``d * (k - 1) + 1`` inputs of the halo.  Convolutions that read
    the network input use im2col, as in the simulator; with ``grouped_im2col``
    grouped (depthwise) ones do too, so that a pack's ``K * K * in/groups``
    window is reduced across the N rows of Fusion Units (and fused at low
    precision) instead of one window element per cycle.
    """
    if layer.kind == "linear":
        return LoopNest(1, 1, 1, 1, 1, 1, 1, 1, layer.in_channels, layer.out_channels, batch, False)
    (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
    (oh, ow), (sh, sw) = layer.out_size, layer.stride  # type: ignore[misc]
    ic = layer.in_channels // layer.groups * groups_per_pack
    oc = layer.out_channels // layer.groups * groups_per_pack
    im2col = bool(layer.reads_network_input) or (grouped_im2col and layer.groups > 1)
    return LoopNest(kh, kw, dh * (kh - 1) + 1, dw * (kw - 1) + 1, oh, ow, sh, sw, ic, oc, batch, im2col)
