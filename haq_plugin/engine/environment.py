"""The quantization environment: HAQ's layer-by-layer decision process.

One episode walks the quantizable layers in execution order and takes two steps
per layer: first the weight bits, then the activation bits (of the layer's
input).  At each step the agent sees a 10-feature state and answers with an
action in [0, 1], which becomes a bit width.  After the last step the policy is
forced into the resource budget by lowering bits, so that every evaluated policy
is one the hardware could actually afford.

State features (each min-max normalised over the layers, so they lie in [0, 1]):

====  =========================================================================
 0    layer index
 1    input channels (in_features for Linear)
 2    output channels (out_features for Linear)
 3    kernel size (1 for Linear)
 4    stride (0 for Linear)
 5    input feature-map area (in_features for Linear)
 6    number of weight parameters
 7    1 for a depthwise convolution, else 0
 8    1 for the weight step, 0 for the activation step
 9    bits chosen at the previous step / largest possible bits (0 at the first step)
====  =========================================================================

Fixed bits (first/last layer kept at 8 bits, user pins) still take their steps,
so every episode has the same length, but the agent's action is ignored there.

Two quantization modes (``quantize``):

* ``"weights+activations"`` (HAQ's setting): two steps per layer, as above.
* ``"weights"``: weight-only quantization.  Activations stay in floating point
  in the backend, so the episode has one step per layer, the weight step
  (feature 8 is always 1, feature 9 holds the previous layer's weight bits).
  In every policy this environment returns, each activation slot holds
  ``KEPT_BITS`` (8): the value the cost model charges for an input that is not
  quantized below 8 bits, fixed like a kept layer, so budget enforcement never
  touches it.  Under ``size`` this changes nothing (activations cost nothing);
  under latency or energy it charges 8-bit inputs.  A backend that is told
  the mode reads these 8s as "not quantized".

Budget enforcement is described in :meth:`QuantizationEnv.enforce_budget` (its steps in
:mod:`haq_plugin.engine.enforcement`); the reward and the budget in :mod:`haq_plugin.engine.reward`;
which bits are fixed in :mod:`haq_plugin.engine.space`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from haq_plugin.api.bits import BitPair
from haq_plugin.engine import enforcement
from haq_plugin.engine.costs import CostTable
from haq_plugin.api.errors import HaqError, InfeasibleBudget
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.quantize_mode import check_quantize
from haq_plugin.engine.reward import Budget
from haq_plugin.engine.space import KEPT_BITS, FixedPair

STATE_FEATURES = (
    "layer_index", "in_channels", "out_channels", "kernel_size", "stride", "input_area",
    "weight_params", "is_depthwise", "is_weight_step", "previous_bits",
)
STATE_DIM = len(STATE_FEATURES)
LAYER_FEATURES = STATE_FEATURES.index("is_weight_step")  # features 0..7 describe the layer
IS_WEIGHT_STEP = STATE_FEATURES.index("is_weight_step")
PREVIOUS_BITS = STATE_FEATURES.index("previous_bits")



def action_to_bits(action: float, allowed: Sequence[int]) -> int:
    """Map an action in [0, 1] to one of the ``allowed`` bit widths (sorted ascending).

    HAQ's mapping is ``round(b_min - 0.5 + a * (b_max - b_min + 1))``, clipped:
    [0, 1] is cut into equal bins, one per bit width.  Here the bins are over the
    allowed widths, which is the same mapping when they are contiguous (2..8) and
    gives each width an equal share when the hardware skips some (e.g. 2, 4, 8).
    Rounding is half-up (``floor``), so a bin's lower edge belongs to it.
    """
    k = len(allowed)
    index = int(math.floor(float(action) * k))
    return int(allowed[min(max(index, 0), k - 1)])


def layer_features(layers: Sequence[LayerSpec]) -> np.ndarray:
    """The 8 static features of every layer, before normalisation ([n_layers, 8])."""
    rows = []
    for k, layer in enumerate(layers):
        linear = layer.kind == "linear"
        area = layer.in_channels if linear else layer.in_size[0] * layer.in_size[1]
        rows.append([
            k, layer.in_channels, layer.out_channels, layer.kernel_size[0],
            0 if linear else layer.stride[0], area, layer.params, float(layer.is_depthwise),
        ])
    return np.asarray(rows, dtype=np.float64)


def min_max_normalise(features: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1]; a constant column becomes 0 (it carries no information)."""
    low, high = features.min(axis=0), features.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (features - low) / span


class QuantizationEnv:
    """Episodes of bit choices for ``layers`` under a budget on one cost table metric."""

    def __init__(self, layers: Sequence[LayerSpec], table: CostTable, constraint: str, budget: float,
                 allowed_bits: Sequence[int], fixed_bits: Mapping[str, BitPair] | None = None,
                 quantize: str = "weights+activations") -> None:
        check_quantize(quantize, "quantize")
        if not 0.0 < budget <= 1.0:
            raise HaqError(f"budget must be a fraction of the 8-bit cost in (0, 1], got {budget!r} "
                           "(e.g. 0.5 for half the 8-bit latency).")
        self.layers = list(layers)
        self.table = table
        self.costs = np.asarray(table.metric(constraint), dtype=np.float64)
        self.allowed = tuple(sorted(set(int(b) for b in allowed_bits)))
        if not self.allowed:
            raise HaqError("No bit width is allowed for the search (check min_bits/max_bits against the "
                           "bit widths of the hardware and the backend).")
        fixed = dict(fixed_bits or {})
        self.quantize = quantize
        self.weights_only = quantize == "weights"
        if self.weights_only:  # activations are not quantized: fixed at the 8 bits the cost model charges
            fixed = {layer.name: (fixed.get(layer.name, (None, None))[0], KEPT_BITS) for layer in self.layers}
        self.fixed: list[FixedPair] = [fixed.get(layer.name, (None, None)) for layer in self.layers]
        # (layer, slot) decided at each step: slot 0 is the weight, 1 the activation
        self._slots = [(i, slot) for i in range(len(self.layers)) for slot in ((0,) if self.weights_only else (0, 1))]
        self._check_bits_in_table(fixed)
        self.budget = Budget(constraint, float(budget), self.cost([(KEPT_BITS, KEPT_BITS)] * len(self.layers)))
        self.n_steps = len(self._slots)
        self.bits_scale = float(max([*self.allowed, *(b for pair in fixed.values() for b in pair if b is not None)]))
        self._states = self._static_states()
        self._check_feasible()
        self.reset()

    # -- set-up -----------------------------------------------------------------------
    def _check_bits_in_table(self, fixed: Mapping[str, BitPair]) -> None:
        needed = set(self.allowed) | {KEPT_BITS} | {b for pair in fixed.values() for b in pair if b is not None}
        missing = sorted(needed - set(self.table.bits))
        if missing:
            raise HaqError(f"{', '.join(map(str, missing))}-bit costs are not in the cost table of hardware "
                           f"'{self.table.hardware_name}' (it covers {', '.join(map(str, self.table.bits))} bits). "
                           "The budget is relative to the 8-bit cost, and kept or pinned layers need their "
                           "bits supported.")
        self._index = {b: self.table.index(b) for b in needed}

    def _static_states(self) -> np.ndarray:
        per_layer = min_max_normalise(layer_features(self.layers))
        states = np.zeros((self.n_steps, STATE_DIM), dtype=np.float64)
        layer_of_step = [i for i, _ in self._slots]
        states[:, :LAYER_FEATURES] = per_layer[layer_of_step]
        states[:, IS_WEIGHT_STEP] = [1.0 if slot == 0 else 0.0 for _, slot in self._slots]
        return states

    def _cheapest_pairs(self) -> list[BitPair]:
        """Per layer, the cheapest (weight, activation) bits its free slots allow.

        Usually the minimum bits, but not always: on some accelerators a width
        below the native one costs as much or more (e.g. BitFusion pads odd
        widths), so the true floor of the budget is found by looking.  Ties go
        to more bits, which cost nothing and can only help accuracy.
        """
        pairs = []
        for i, (fw, fa) in enumerate(self.fixed):
            ws = (fw,) if fw is not None else self.allowed
            acts = (fa,) if fa is not None else self.allowed
            pairs.append(min(((w, a) for w in ws for a in acts),
                             key=lambda p: (self.layer_cost(i, *p), -(p[0] + p[1]), -p[0])))
        return pairs

    def _check_feasible(self) -> None:
        self.cheapest = self._cheapest_pairs()
        floor = self.cost(self.cheapest)
        if not self.budget.fits(floor):
            smallest = floor / self.budget.reference
            stated = math.ceil(smallest * 1e4) / 1e4
            raise InfeasibleBudget(
                f"The {self.budget.constraint} budget of {self.budget.fraction:g} x the 8-bit cost cannot be met: "
                f"even the cheapest policy (every free layer at its cheapest allowed bits, {self.allowed[0]} "
                f"bits on most hardware; kept and pinned layers unchanged) costs {smallest:.6f} x the 8-bit "
                f"cost. The smallest feasible budget is {stated:.4f}; raise the budget, lower min_bits, or "
                "unpin/unkeep layers.",
                smallest=stated,
            )

    # -- episode ----------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Start an episode; return the first state."""
        self._step = 0
        self._chosen: list[int] = []
        return self._states[0].copy()

    def step(self, action: float) -> np.ndarray | None:
        """Apply ``action`` to the current step; return the next state, or None after the last step."""
        layer, slot = self._slots[self._step]
        bits = self.fixed[layer][slot]
        if bits is None:
            bits = action_to_bits(action, self.allowed)
        self._chosen.append(bits)
        self._step += 1
        if self._step == self.n_steps:
            return None
        state = self._states[self._step].copy()
        state[PREVIOUS_BITS] = bits / self.bits_scale
        return state

    def chosen_bits(self) -> list[BitPair]:
        """The (weight, activation) bits of the finished episode, before budget enforcement."""
        if len(self._chosen) != self.n_steps:
            raise RuntimeError("the episode is not finished")
        pairs = [list(pair) for pair in self.fixed]
        for (layer, slot), bits in zip(self._slots, self._chosen):
            pairs[layer][slot] = bits
        return [(int(w), int(a)) for w, a in pairs]

    # -- costs and budget -------------------------------------------------------------
    def layer_cost(self, i: int, w: int, a: int) -> float:
        return float(self.costs[i, self._index[w], self._index[a]])

    def cost(self, bits: Sequence[BitPair]) -> float:
        """Total cost of a policy (exactly rounded sum, so order never changes a budget decision)."""
        return math.fsum(self.layer_cost(i, w, a) for i, (w, a) in enumerate(bits))

    def fraction(self, bits: Sequence[BitPair]) -> float:
        """Cost of a policy as a fraction of the w8/a8 cost."""
        return self.cost(bits) / self.budget.reference

    def fits(self, bits: Sequence[BitPair]) -> bool:
        return self.budget.fits(self.cost(bits))

    def enforce_budget(self, bits: Sequence[BitPair]) -> list[BitPair]:
        """Lower bits until the policy fits the budget, then give back what is left over.

        The rule (HAQ's action adjustment, made cost-aware):

        1. A policy that fits is returned unchanged.
        2. Rounds of lowering.  In each round every free slot (a layer's weight
           or activation bits) whose next cheaper width actually reduces the
           constrained cost is lowered once, to the widest allowed width below
           it that costs less.  Within a round the slots go in order of cost
           saved per bit given up, largest first (ties: later layer first,
           activation before weight), and the round order is recomputed from
           the current bits at its start.  A slot whose lowering saves nothing
           (activations under ``size``; widths the hardware pads to the same
           cost) is never lowered.  Lowering stops at the first policy that fits.
        3. Give back: while some slot below its proposed width can be raised one
           allowed width and the policy still fits, one is taken: the slot with
           the fewest bits first (a step up there removes the most rounding
           error), among those the raise that costs least per bit, then layer
           order.
           The result is maximal: no single step back towards the proposal fits.

        Rounds keep HAQ's even descent (every layer loses about as many steps),
        so a higher action still means more bits after enforcement; ordering by
        saving makes the layers that save most pay first within a round instead
        of whichever sits last.  Fixed bits are never touched, and bits only go
        down from the proposal, with one exception: on hardware where a width
        below another costs more (BitFusion-style padding, see
        :meth:`_cheapest_pairs`), lowering can get stuck over budget; then
        layers switch to their cheapest pair, largest saving first, until the
        policy fits; the give-back step then leaves those layers as they are.
        """
        current = [list(pair) for pair in bits]
        per_layer = [self.layer_cost(i, w, a) for i, (w, a) in enumerate(current)]
        if self.budget.fits(math.fsum(per_layer)):
            return [tuple(pair) for pair in current]  # type: ignore[misc]
        proposed = [list(pair) for pair in bits]
        if not enforcement.lower_in_rounds(self, current, per_layer):
            for i in enforcement.switch_to_cheapest(self, current, per_layer):
                proposed[i] = list(current[i])  # a switched layer stays at its cheapest pair
        enforcement.give_back(self, current, per_layer, proposed)
        return [tuple(pair) for pair in current]  # type: ignore[misc]

    # -- reference policies -----------------------------------------------------------
    def uniform_bits(self, bits: int) -> list[BitPair]:
        """Every free weight and activation at ``bits``; fixed bits as fixed."""
        return [(w if w is not None else bits, a if a is not None else bits) for w, a in self.fixed]

    def minimum_bits(self) -> list[BitPair]:
        """Every free bit at the minimum allowed width (the cheapest policy on most hardware)."""
        return self.uniform_bits(self.allowed[0])

    def best_uniform(self) -> tuple[int, list[BitPair]] | None:
        """The highest uniform width (w = a) whose policy fits the budget, or None if none fits.

        None is only possible on hardware where low widths are not the cheapest
        (a mixed policy fits, no uniform one does).
        """
        for bits in reversed(self.allowed):
            policy = self.uniform_bits(bits)
            if self.fits(policy):
                return bits, policy
        return None
