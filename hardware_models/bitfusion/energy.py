"""Energy constants of the Bit Fusion model, derived as the authors' simulator derives them.

Sources (public repository ``hsharma35/bitfusion``, commit ``04ec1c8``):

* **Core.**  ``results/systolic_array_synth.csv`` has no row for most array sizes;
  the simulator (``src/simulator/simulator.py``, ``get_energy_cost``) falls back to
  the 4x4 array synthesised with 8-bit/2-bit precision, 3,673,500 nW, scales it by
  ``N * M / 16`` and divides by the configured clock.  Energy is charged on
  non-stall cycles only (rule 9 of ``tests/data/bitfusion/REFERENCE.md``).
* **SRAM.**  ``sram/cacti_sweep.csv`` (CACTI, 45 nm, 4-byte block) gives the
  dynamic energy of one 32-bit access of one bank; the simulator splits WBUF into
  ``N * M`` banks, IBUF into ``N`` banks and OBUF into ``M`` banks with a
  read-write port, and charges ``energy per access / 32`` per bit.
  :data:`CACTI_BANKS` holds every bank that cache contains.
* **DRAM.**  15 pJ per bit read or written (``src/simulator/stats.py``,
  ``Stats.get_energy``, default ``dram_cost = 15e-3`` nJ; its comment says 6 pJ
  but 15 is the value used).

Approximation: the simulator's default ``conf.ini`` array (8x8, 16 KiB OBUF)
needs a 2048-byte OBUF bank *with* a read-write port, which the CACTI cache does
not hold; the 2048-byte bank *without* that port stands in for it.  In the one
size the cache has both ways (4096 B), the read-write port costs 16 % more per
read and 17 % more per write, so OBUF energy of that configuration is about that
much too low.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from haq_plugin.api.errors import HaqError
from haq_plugin.hardware_models.bitfusion.rules import EnergyTable

SYNTH_POWER_4X4_NW = 3_673_500.0
"""Power of the synthesised 4x4 array (pmax 8, pmin 2) at 500 MHz, in nW (systolic_array_synth.csv)."""

DRAM_PJ_PER_BIT = 15.0
"""DRAM energy per bit read or written (stats.py, ``dram_cost = 15e-3`` nJ)."""

ACCESS_BITS = 32
"""CACTI block of 4 bytes: one access moves 32 bits."""


@dataclass(frozen=True)
class CactiBank:
    """One SRAM bank of the simulator's CACTI cache (45 nm), energies in nJ per 32-bit access."""

    bank_bytes: int
    read_write_port: bool
    read_nj: float
    write_nj: float


CACTI_BANKS: tuple[CactiBank, ...] = (
    CactiBank(128, False, 0.0006837010000000001, 0.000925317),
    CactiBank(512, True, 0.00106097, 0.00233869),
    CactiBank(1024, False, 0.00113324, 0.00329596),
    CactiBank(2048, False, 0.00190318, 0.00363853),
    CactiBank(4096, False, 0.00342953, 0.00431011),
    CactiBank(4096, True, 0.00398324, 0.00505131),
    CactiBank(8192, False, 0.00639163, 0.00556268),
    CactiBank(16384, False, 0.009981700000000001, 0.0084209),
)
"""Every bank in ``bitfusion/sram/cacti_sweep.csv`` (copied in tests/data/bitfusion/cacti_banks.csv)."""


def core_pj_per_cycle(rows: int, cols: int, frequency_mhz: float) -> float:
    """Synthesised 4x4 power scaled to N x M, divided by the clock (pJ per busy cycle)."""
    return SYNTH_POWER_4X4_NW * 1e-9 * (rows * cols / 16) / (frequency_mhz * 1e6) * 1e12


def bank_pj_per_bit(bank_bytes: int, read_write_port: bool) -> tuple[float, float] | None:
    """(read, write) pJ per bit of one bank, or None when CACTI has no such bank.

    A read-write-port bank missing from the table falls back to the plain one.
    """
    for want_port in ((True, False) if read_write_port else (False,)):
        for bank in CACTI_BANKS:
            if bank.bank_bytes == bank_bytes and bank.read_write_port == want_port:
                return bank.read_nj * 1e3 / ACCESS_BITS, bank.write_nj * 1e3 / ACCESS_BITS
    return None


def buffer_pj_per_bit(owner: str, buffer: str, config: dict, bank_options: tuple[str, ...],
                      read_write_port: bool) -> tuple[float, float]:
    """(read, write) pJ per bit of ``buffer`` split into equal banks, one per product of ``bank_options``.

    Errors name the options responsible: the buffer size, the options that set
    the bank count, and the energy options that bypass the derivation.
    """
    size_option = f"{buffer.lower()}_bytes"
    buffer_bytes = config[size_option]
    banks = math.prod(config[name] for name in bank_options)
    given = " x ".join(f"{name}={config[name]}" for name in bank_options)
    energy_options = f"{buffer.lower()}_read_pj_per_bit and {buffer.lower()}_write_pj_per_bit"
    if buffer_bytes % banks:
        raise HaqError(
            f"{owner}: {size_option}={buffer_bytes} does not split into {banks} equal {buffer} banks (one per "
            f"{given}), which the CACTI energy derivation needs. Choose {size_option} as a multiple of {banks}, "
            f"change {' or '.join(bank_options)}, or set {energy_options} explicitly."
        )
    energy = bank_pj_per_bit(buffer_bytes // banks, read_write_port)
    if energy is None:
        sizes = sorted({b.bank_bytes for b in CACTI_BANKS})
        raise HaqError(
            f"{owner}: {size_option}={buffer_bytes} split into {banks} banks ({given}) gives "
            f"{buffer_bytes // banks}-byte {buffer} banks, which the simulator's CACTI table lacks (it has banks "
            f"of {', '.join(map(str, sizes))} bytes). Choose {size_option} and {' / '.join(bank_options)} that "
            f"give one of those bank sizes, or set {energy_options} explicitly."
        )
    return energy
