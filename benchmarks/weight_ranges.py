"""Weight reconstruction error of min-max and MSE-clipped per-channel ranges, on the demo model.

Prints, for each bit width, the summed squared error of symmetric per-channel
fake quantization over the demo's Conv/Linear weights (channels of at least
16 weights), with the min-max range and with the MSE-clipped range of
:mod:`haq_plugin.adapters.common.weight_ranges`, and the relative reduction; then
the validation accuracy at uniform weight bits (activations 8, first and last
layer kept at 8/8) with clipping off and on: torch.ao (clipping forced on at
every width) and Brevitas (``clip_weights``, which clips at 4 bits or fewer).

    python benchmarks/weight_ranges.py
"""

from __future__ import annotations

import torch
from torch import nn

from haq_plugin.adapters.common import weight_ranges as _weight_ranges
from haq_plugin.adapters.brevitas import BrevitasBackend
from haq_plugin.adapters.torch_ao import TorchAoFxBackend
from haq_plugin.adapters.common.weight_ranges import (
    MSE_MIN_CHANNEL_SIZE, mse_clip_ratios, reconstruction_error, symmetric_scale)
from haq_plugin.tasks.demo import load_demo


def errors(weights: list[torch.Tensor], bits: int) -> tuple[float, float]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    plain = clipped = 0.0
    for weight in weights:
        rows = weight.reshape(weight.shape[0], -1)
        scale = symmetric_scale(rows.amin(1), rows.amax(1), lo, hi)
        plain += reconstruction_error(weight, scale, lo, hi)
        clipped += reconstruction_error(weight, scale * mse_clip_ratios(weight, lo, hi), lo, hi)
    return plain, clipped


def main() -> None:
    demo = load_demo()
    model = demo.model
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               and m.weight[0].numel() >= MSE_MIN_CHANNEL_SIZE]
    print(f"{len(weights)} weight tensors; squared reconstruction error, min-max vs MSE-clipped")
    print("bits  min-max     mse-clipped  reduction")
    for bits in range(2, 9):
        plain, clipped = errors(weights, bits)
        print(f"{bits:>4}  {plain:10.5f}  {clipped:11.5f}  {100 * (1 - clipped / plain):8.1f}%")
    accuracy_with_and_without(demo, range(2, 7))


def accuracy_with_and_without(demo, widths: range) -> None:
    backend = TorchAoFxBackend()
    backend.prepare(demo.model, demo.example_input, demo.calibration_data)
    names = backend.plan.layers
    brevitas = {}
    for clip in (False, True):
        brevitas[clip] = BrevitasBackend()
        brevitas[clip].clip_weights = clip
        brevitas[clip].prepare(demo.model, demo.example_input, demo.calibration_data)
    print("w bits  torch.ao min-max  torch.ao clipped  brevitas min-max  brevitas clipped")
    for bits in widths:
        policy = {n: (8, 8) if n in (names[0], names[-1]) else (bits, 8) for n in names}
        results = []
        for max_bits in (0, 8):  # clipping off, clipping on at every width
            _weight_ranges.MSE_MAX_BITS = max_bits
            backend.set_policy(policy)
            results.append(backend.evaluate(demo.eval_fn))
        _weight_ranges.MSE_MAX_BITS = 4
        for clip in (False, True):
            brevitas[clip].set_policy(policy)
            brevitas[clip].calibrate()
            results.append(brevitas[clip].evaluate(demo.eval_fn))
        print(f"{bits:>6}" + "".join(f"  {value:16.2f}" for value in results))


if __name__ == "__main__":
    main()
