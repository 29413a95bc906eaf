"""Decision units: which layers share one choice of bits (``decisions=layer|block|role``).

HAQ decides per layer.  A language model has hundreds of linears (210 in
SmolLM2-135M's 30 blocks), and layers that do the same job tend to want the
same precision, so a search can also decide once per group:

* ``layer``: one decision per layer (HAQ; the default for CNNs);
* ``block``: one per parent module, i.e. per decoder block's attention and per
  its MLP (``model.layers.3.self_attn``: q, k, v, o together; 60 for SmolLM2);
* ``role``: one per tensor role across blocks, the layer's name with its block
  index replaced by ``*`` (``model.layers.*.self_attn.v_proj``; 7 for a Llama).

Fixed layers (kept at 8 bits, pinned) are units of their own, so a pin never
spreads to its neighbours.  A unit's cost is the sum of its layers' costs at
the unit's bits, which is exact: costs add over layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import LayerSpec


DECISIONS = ("layer", "block", "role")
_INDEX = re.compile(r"(^|\.)\d+(\.|$)")


def unit_key(name: str, decisions: str) -> str:
    """The name of the unit layer ``name`` belongs to."""
    if decisions == "layer":
        return name
    if decisions == "block":
        return name.rpartition(".")[0] or name
    if decisions == "role":
        return _INDEX.sub(lambda m: f"{m.group(1)}*{m.group(2)}", name, count=1)
    raise HaqError(f"decisions={decisions!r} is not a way to group layers; use one of {', '.join(DECISIONS)}.")


@dataclass(frozen=True)
class DecisionUnits:
    """``members[u]``: indices (into the layers) of unit ``u``, in execution order of their first layer."""

    names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    unit_of: tuple[int, ...]

    @classmethod
    def build(cls, layers: Sequence[LayerSpec], decisions: str, fixed: Mapping[str, object]) -> "DecisionUnits":
        keys: dict[str, list[int]] = {}
        for i, layer in enumerate(layers):
            key = layer.name if layer.name in fixed else unit_key(layer.name, decisions)
            keys.setdefault(key, []).append(i)
        names = tuple(keys)
        members = tuple(tuple(indices) for indices in keys.values())
        unit_of = [0] * len(layers)
        for u, indices in enumerate(members):
            for i in indices:
                unit_of[i] = u
        return cls(names, members, tuple(unit_of))

    @property
    def trivial(self) -> bool:
        """One layer per unit: the search is HAQ's, layer by layer."""
        return all(len(m) == 1 for m in self.members)

    def expand(self, unit_bits: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Per-layer bits from per-unit bits."""
        return [tuple(unit_bits[u]) for u in self.unit_of]  # type: ignore[misc]

    def collapse(self, layer_bits: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Per-unit bits from per-layer bits that agree within every unit (the first layer's)."""
        return [tuple(layer_bits[m[0]]) for m in self.members]  # type: ignore[misc]

    def unit_specs(self, layers: Sequence[LayerSpec]) -> list[LayerSpec]:
        """One ``LayerSpec`` per unit for the agent's state features: the layer itself, or a stand-in.

        A stand-in is a linear layer with the unit's total output channels and
        its total weights (inputs = weights / outputs), which is what the
        features (sizes, parameter count) describe.
        """
        specs = []
        for name, indices in zip(self.names, self.members):
            if len(indices) == 1:
                specs.append(layers[indices[0]])
                continue
            outputs = sum(layers[i].out_channels for i in indices)
            params = sum(layers[i].params for i in indices)
            specs.append(LayerSpec(name=name, kind="linear", in_channels=max(1, round(params / outputs)),
                                   out_channels=outputs))
        return specs
