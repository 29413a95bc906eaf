"""Per-layer cost tables and the constraints a search can budget.

Simulating a layer is slow compared to looking a number up, and a search costs
thousands of policies, so the core simulates each (layer, weight bits,
activation bits) once and keeps a :class:`CostTable`.  Costing a policy is then a
sum of table entries.  Tables are cached on disk, keyed by hardware name, its
options, the layer shapes, the bit widths and, for a measured model, its
:meth:`~haq_plugin.api.hardware.HardwareModel.environment` (machine, library versions).

Four constraints can be budgeted:

* ``latency`` (seconds per batch) and ``energy`` (joules per batch) from the
  hardware model;
* ``size``: weight storage in bytes, ``params * weight_bits / 8`` (biases stay in
  float and are not counted), or the backend's own count where it stores more
  than the integers (group scales: :func:`with_backend_storage`);
* ``bops``: bit operations, ``MACs * weight_bits * activation_bits``.

The last two are hardware independent and computed here.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import zipfile
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from haq_plugin.api.bits import check_width
from haq_plugin.storage.cache import cache_dir, stable_hash
from haq_plugin.storage.code_hash import module_source_hash
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import LayerSpec

CONSTRAINTS = ("latency", "energy", "size", "bops")
UNITS = {"latency": "s", "energy": "J", "size": "B", "bops": "BOPs"}
CACHE_FORMAT = 1


@dataclass
class CostTable:
    """Latency and energy of every layer at every bit pair of ``bits``.

    ``latency[i, wi, ai]`` is layer ``i`` with ``bits[wi]``-bit weights and
    ``bits[ai]``-bit activations; ``energy`` has the same shape, or is None when
    the hardware model has no energy model.  ``size[i, wi]`` is the bytes that
    store layer ``i``'s weights at ``bits[wi]`` (the backend's
    ``weight_storage_bits``, :func:`with_backend_storage`; None: ``params * bits / 8``).
    """

    layers: list[LayerSpec]
    bits: tuple[int, ...]
    latency: np.ndarray
    energy: np.ndarray | None = None
    hardware_name: str = ""
    build_seconds: float = 0.0
    from_cache: bool = False
    #: ``[layer, weight bits]`` bytes and ``[layer, w, a]`` BOPs, when not derived from the layer shapes
    size: np.ndarray | None = None
    bops: np.ndarray | None = None
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
        if name == "size" and self.size is not None:
            return np.broadcast_to(self.size[:, :, None], self.latency.shape)
        if name == "bops" and self.bops is not None:
            return self.bops
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
        if len(bits) != len(self.layers):
            raise HaqError(f"a policy of {len(bits)} bit pairs cannot be costed on a table of "
                           f"{len(self.layers)} layers (hardware '{self.hardware_name}').")
        rows = np.arange(len(self.layers))
        wi = np.array([self._layer_index(i, w, "weight") for i, (w, _) in enumerate(bits)], dtype=np.int64)
        ai = np.array([self._layer_index(i, a, "activation") for i, (_, a) in enumerate(bits)], dtype=np.int64)
        return table[rows, wi, ai]

    def _layer_index(self, row: int, bits: int, what: str) -> int:
        """:meth:`index`, with an error that names the layer and the operand."""
        if bits in self._index:
            return self._index[bits]
        raise HaqError(f"layer '{self.layers[row].name}': {bits}-bit {what}s are not in the cost table; it covers "
                       f"{', '.join(map(str, self.bits))} bits on hardware '{self.hardware_name}'.")

    def policy_cost(self, name: str, bits: Sequence[tuple[int, int]]) -> float:
        """Total cost of a policy given as (w, a) pairs in layer order."""
        return float(self.layer_costs(name, bits).sum())

    def uniform_cost(self, name: str, bits: int = 8) -> float:
        """Total cost when every layer has ``bits`` weights and activations."""
        return self.policy_cost(name, [(bits, bits)] * len(self.layers))


def with_backend_storage(table: CostTable, backend: Any) -> CostTable:
    """``table`` with sizes as ``backend`` stores them (``QuantBackend.weight_storage_bits``: params x bits
    unless its format adds more, such as group scales)."""
    size = np.array([[backend.weight_storage_bits(layer, bits) / 8.0 for bits in table.bits]
                     for layer in table.layers])
    return dataclasses.replace(table, size=size)


def summed_table(table: CostTable, layers: Sequence[LayerSpec], members: Sequence[Sequence[int]]) -> CostTable:
    """A table whose rows are groups of ``table``'s layers (their costs added), for decisions per group."""
    def summed(values: np.ndarray) -> np.ndarray:
        return np.stack([values[list(rows)].sum(axis=0) for rows in members])

    return dataclasses.replace(
        table, layers=list(layers), latency=summed(table.latency),
        energy=None if table.energy is None else summed(table.energy),
        size=summed(np.asarray(table.metric("size"))[:, :, 0]), bops=summed(np.asarray(table.metric("bops"))))


def table_bits(hardware: HardwareModel, bits: Sequence[int] | None = None) -> tuple[int, ...]:
    """The bit widths a table covers: ``bits`` (checked) or the hardware's, up to 8."""
    supported = tuple(hardware.supported_bits)
    if bits is None:
        return tuple(b for b in supported if b <= 8)
    checked = [check_width(b, f"cost table bit width for hardware model '{hardware.name}'") for b in bits]
    unsupported = [b for b in checked if b not in supported]
    if unsupported:
        raise HaqError(f"hardware model '{hardware.name}' does not support {unsupported} bits; supported: "
                       f"{', '.join(map(str, supported))}.")
    return tuple(sorted(set(checked)))


def build_cost_table(hardware: HardwareModel, layers: Sequence[LayerSpec], bits: Sequence[int] | None = None,
                     cache: bool = True) -> CostTable:
    """Simulate every layer at every bit pair once (or load the cached result).

    A cache that cannot be used (``HAQ_PLUGIN_CACHE`` a file, uncreatable or
    read-only) costs one warning and no cache; a cached file that cannot be read
    or has the wrong shape is a miss: the table is rebuilt and the file replaced.
    """
    bit_axis = table_bits(hardware, bits)
    key = stable_hash({"format": CACHE_FORMAT, "hw": hardware.name, "cls": type(hardware).__qualname__,
                       "code": model_code_hash(type(hardware)), "config": hardware.config,
                       "layers": [l.shape_key() for l in layers], "bits": bit_axis,
                       **({"env": env} if (env := hardware.environment()) else {})})
    path = _cache_path(f"{hardware.name}-{key}.npz") if cache else None
    if path is not None and path.exists():
        start = time.perf_counter()
        table = _load(path, hardware, layers, bit_axis)
        if table is not None:
            table.build_seconds, table.from_cache = time.perf_counter() - start, True
            return table
    start = time.perf_counter()
    table = _simulate(hardware, layers, bit_axis)
    table.build_seconds = time.perf_counter() - start
    if path is not None:
        _save(path, table)
    return table


def model_code_hash(cls: type) -> str:
    """Hash of the source of the module that defines ``cls`` and of the project modules it imports.

    Part of the cache key, so that editing or upgrading a simulator never serves
    a table computed by its previous version, while editing one model leaves the
    other models' tables valid (see :mod:`haq_plugin.storage.code_hash`).
    """
    return module_source_hash(cls.__module__)


def _cache_path(filename: str) -> Path | None:
    """Where a table is cached, or None (after one warning) when the cache directory is unusable."""
    try:
        directory = cache_dir("cost-tables")
        probe = directory / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        _warn_once(f"haq-plugin: warning: cost-table cache unusable ({exc.strerror or exc}: "
                   f"{exc.filename or os.environ.get('HAQ_PLUGIN_CACHE', '')}); running without the cache.")
        return None
    return directory / filename


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


def _load(path: Path, hardware: HardwareModel, layers: Sequence[LayerSpec],
          bit_axis: tuple[int, ...]) -> CostTable | None:
    """The cached table, or None when the file is damaged or does not fit the request."""
    try:
        with np.load(path) as data:
            latency = np.array(data["latency"], dtype=np.float64)
            energy = np.array(data["energy"], dtype=np.float64) if "energy" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: a cache miss
        return None
    if (energy is None) == hardware.has_energy or (energy is not None and energy.shape != latency.shape):
        return None
    try:
        return CostTable(list(layers), bit_axis, latency, energy, hardware.name)
    except ValueError:
        return None


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


def _save(path: Path, table: CostTable) -> None:
    """Write atomically (a temporary file, then a rename); a failed write only costs the cache."""
    arrays = {"latency": table.latency}
    if table.energy is not None:
        arrays["energy"] = table.energy
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(table)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _warn_once(f"haq-plugin: warning: could not write the cost-table cache ({exc.strerror or exc}); "
                   "continuing without it.")
