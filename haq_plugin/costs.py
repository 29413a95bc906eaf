"""Per-layer cost tables and the constraints a search can budget.

Simulating a layer is slow compared to looking a number up, and a search costs
thousands of policies, so the core simulates each (layer, weight bits,
activation bits) once and keeps a :class:`CostTable`.  Costing a policy is then a
sum of table entries.  Tables are cached on disk, keyed by hardware name, its
options, the layer shapes and the bit widths.

Four constraints can be budgeted:

* ``latency`` (seconds per batch) and ``energy`` (joules per batch) from the
  hardware model;
* ``size``: weight storage in bytes, ``params * weight_bits / 8`` (biases stay in
  float and are not counted);
* ``bops``: bit operations, ``MACs * weight_bits * activation_bits``.

The last two are hardware independent and computed here.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from haq_plugin.cache import cache_dir, stable_hash
from haq_plugin.errors import HaqError
from haq_plugin.hardware import HardwareModel
from haq_plugin.layers import LayerSpec

CONSTRAINTS = ("latency", "energy", "size", "bops")
UNITS = {"latency": "s", "energy": "J", "size": "B", "bops": "BOPs"}
CACHE_FORMAT = 1


@dataclass
class CostTable:
    """Latency and energy of every layer at every bit pair of ``bits``.

    ``latency[i, wi, ai]`` is layer ``i`` with ``bits[wi]``-bit weights and
    ``bits[ai]``-bit activations; ``energy`` has the same shape, or is None when
    the hardware model has no energy model.
    """

    layers: list[LayerSpec]
    bits: tuple[int, ...]
    latency: np.ndarray
    energy: np.ndarray | None = None
    hardware_name: str = ""
    build_seconds: float = 0.0
    from_cache: bool = False
    _index: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {b: i for i, b in enumerate(self.bits)}
        expected = (len(self.layers), len(self.bits), len(self.bits))
        if self.latency.shape != expected:
            raise ValueError(f"latency table has shape {self.latency.shape}, expected {expected}")

    def index(self, bits: int) -> int:
        """Position of a bit width on the table's bit axes."""
        try:
            return self._index[bits]
        except KeyError:
            raise HaqError(f"{bits}-bit is not in the cost table; it covers {', '.join(map(str, self.bits))} "
                           f"bits on hardware '{self.hardware_name}'.") from None

    def metric(self, name: str) -> np.ndarray:
        """The [layer, weight bits, activation bits] table of one constraint."""
        if name == "latency":
            return self.latency
        if name == "energy":
            if self.energy is None:
                raise HaqError(f"hardware model '{self.hardware_name}' has no energy model; "
                               "use --constraint latency, size or bops.")
            return self.energy
        b = np.asarray(self.bits, dtype=np.float64)
        if name == "size":
            params = np.array([layer.params for layer in self.layers], dtype=np.float64)
            return np.broadcast_to((params[:, None] * b[None, :] / 8.0)[:, :, None], self.latency.shape)
        if name == "bops":
            macs = np.array([layer.macs for layer in self.layers], dtype=np.float64)
            return macs[:, None, None] * b[None, :, None] * b[None, None, :]
        raise HaqError(f"Unknown constraint '{name}'. Choose one of: {', '.join(CONSTRAINTS)}.")

    def layer_costs(self, name: str, bits: Sequence[tuple[int, int]]) -> np.ndarray:
        """Per-layer cost of a policy given as (w, a) pairs in layer order."""
        table = self.metric(name)
        rows = np.arange(len(self.layers))
        wi = np.array([self.index(w) for w, _ in bits])
        ai = np.array([self.index(a) for _, a in bits])
        return table[rows, wi, ai]

    def policy_cost(self, name: str, bits: Sequence[tuple[int, int]]) -> float:
        """Total cost of a policy given as (w, a) pairs in layer order."""
        return float(self.layer_costs(name, bits).sum())

    def uniform_cost(self, name: str, bits: int = 8) -> float:
        """Total cost when every layer has ``bits`` weights and activations."""
        return self.policy_cost(name, [(bits, bits)] * len(self.layers))


def table_bits(hardware: HardwareModel, bits: Sequence[int] | None = None) -> tuple[int, ...]:
    """The bit widths a table covers: ``bits`` (checked) or the hardware's, up to 8."""
    supported = tuple(hardware.supported_bits)
    if bits is None:
        return tuple(b for b in supported if b <= 8)
    unsupported = [b for b in bits if b not in supported]
    if unsupported:
        raise HaqError(f"hardware model '{hardware.name}' does not support {unsupported} bits; supported: "
                       f"{', '.join(map(str, supported))}.")
    return tuple(sorted(set(int(b) for b in bits)))


def build_cost_table(hardware: HardwareModel, layers: Sequence[LayerSpec], bits: Sequence[int] | None = None,
                     cache: bool = True) -> CostTable:
    """Simulate every layer at every bit pair once (or load the cached result)."""
    bit_axis = table_bits(hardware, bits)
    key = stable_hash({"format": CACHE_FORMAT, "hw": hardware.name, "cls": type(hardware).__qualname__,
                       "code": model_code_hash(type(hardware)), "config": hardware.config,
                       "layers": [l.shape_key() for l in layers], "bits": bit_axis})
    path = cache_dir("cost-tables") / f"{hardware.name}-{key}.npz"
    if cache and path.exists():
        start = time.perf_counter()
        with np.load(path) as data:
            energy = data["energy"] if "energy" in data.files else None
            table = CostTable(list(layers), bit_axis, data["latency"], energy, hardware.name)
        table.build_seconds, table.from_cache = time.perf_counter() - start, True
        return table
    start = time.perf_counter()
    table = _simulate(hardware, layers, bit_axis)
    table.build_seconds = time.perf_counter() - start
    if cache:
        _save(path, table)
    return table


def model_code_hash(cls: type) -> str:
    """Hash of the source files of the package that defines ``cls``.

    Part of the cache key, so that editing or upgrading a simulator never serves
    a table computed by its previous version.
    """
    package = cls.__module__.rpartition(".")[0] or cls.__module__
    files = sorted({getattr(mod, "__file__", None) or "" for name, mod in list(sys.modules.items())
                    if name in (cls.__module__, package) or name.startswith(package + ".")} - {""})
    digest = hashlib.sha256()
    for file in files:
        try:
            digest.update(Path(file).read_bytes())
        except OSError:
            digest.update(file.encode())
    return digest.hexdigest()[:16]


def _simulate(hardware: HardwareModel, layers: Sequence[LayerSpec], bit_axis: tuple[int, ...]) -> CostTable:
    n, nb = len(layers), len(bit_axis)
    latency = np.zeros((n, nb, nb))
    energy = np.zeros((n, nb, nb)) if hardware.has_energy else None
    pairs = [(w, a) for w in bit_axis for a in bit_axis]
    for i, layer in enumerate(layers):
        costs = hardware.layer_costs(layer, pairs)
        for (w, a), cost in zip(pairs, costs):
            wi, ai = bit_axis.index(w), bit_axis.index(a)
            latency[i, wi, ai] = cost.latency_s
            if energy is not None:
                if cost.energy_j is None:
                    raise HaqError(f"hardware model '{hardware.name}' declares has_energy but returned no "
                                   f"energy for layer '{layer.name}'.")
                energy[i, wi, ai] = cost.energy_j
    return CostTable(list(layers), bit_axis, latency, energy, hardware.name)


def _save(path, table: CostTable) -> None:
    arrays = {"latency": table.latency}
    if table.energy is not None:
        arrays["energy"] = table.energy
    tmp = path.with_suffix(f".tmp{id(table)}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
