"""torch.ao against Brevitas on the demo: accuracy at uniform bit widths, and integer levels in use.

For each uniform policy (first and last layer kept at 8/8, as the search does by
default), prints the validation accuracy of both backends, and for torch.ao
the number of distinct values each layer's input takes on the calibration
data (at most 2^a).

    python benchmarks/backend_agreement.py [bits ...]
"""

from __future__ import annotations

import sys

import torch

from haq_plugin.adapters.brevitas import BrevitasBackend
from haq_plugin.adapters.torch_ao import TorchAoFxBackend
from haq_plugin.tasks.demo import load_demo


def levels(backend: TorchAoFxBackend, batches: list[torch.Tensor]) -> dict[str, int]:
    """Distinct values of each layer's input over the calibration batches."""
    seen: dict[str, set] = {}
    hooks = [backend.model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: seen.setdefault(name, set()).update(args[0].flatten().tolist()))
        for name in backend.plan.layers]
    with torch.no_grad():
        for batch in batches:
            backend.model(batch)
    for hook in hooks:
        hook.remove()
    return {name: len(values) for name, values in seen.items()}


def policy(names: list[str], w: int, a: int) -> dict[str, tuple[int, int]]:
    return {name: (8, 8) if name in (names[0], names[-1]) else (w, a) for name in names}


def main(widths: list[int]) -> None:
    torch.set_num_threads(1)
    demo = load_demo()
    ao, brevitas = TorchAoFxBackend(), BrevitasBackend()
    for backend in (ao, brevitas):
        backend.prepare(demo.model, demo.example_input, demo.calibration_data)
    names = ao.plan.layers
    print(f"float val accuracy {demo.float_val_accuracy:.2f}")
    print("w/a   torch.ao  brevitas  torch.ao levels per layer input")
    for bits in widths:
        results = []
        for backend in (ao, brevitas):
            backend.set_policy(policy(names, bits, bits))
            backend.calibrate()
            results.append(backend.evaluate(demo.eval_fn))
        used = levels(ao, demo.calibration_data)
        print(f"{bits}/{bits}  {results[0]:8.2f}  {results[1]:8.2f}  {[used[n] for n in names]}")


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:]] or [8, 6, 5, 4, 3])
