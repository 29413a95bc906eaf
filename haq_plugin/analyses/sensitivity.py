"""Per-layer sensitivity: how much accuracy each layer loses at low bits, and what it costs.

For every quantizable layer and every width ``b`` of ``bits``, the model is
evaluated twice with everything at 8 bits except that layer's weights (first)
or its input activations (second) at ``b`` bits: ``layers x bits x 2``
evaluations, plus one for the uniform 8-bit reference, which is the 8-bit column
of every layer.  Beside the accuracies stands each layer's share of the
constrained cost of the uniform 8-bit policy (from the hardware cost table), so
that a cheap, robust layer and an expensive, sensitive one can be told apart:
this is why a searched policy gives some layers few bits and others many.

Language models (and any search) differ in three ways, each an argument:

* ``metric="perplexity"``: the values are perplexities, and sensitivity is the
  *rise* over uniform 8-bit instead of the drop (:meth:`SensitivityResult.loss`);
* weight-only quantization (``quantize="weights"``, and always for the
  ``groupwise`` backend): activations stay float, so the activation rows would
  only repeat the 8-bit reference and are not measured (``layers x bits``
  evaluations);
* ``decisions="block"`` or ``"role"``: each decision unit, a group of layers the
  search lowers together (:mod:`haq_plugin.engine.decisions`), is measured as
  one row, which is what the greedy strategy measures before it chooses.

A backend may apply other bits than those asked for: torch.ao's FX mode has one
observer for a tensor that several layers read (a residual block's input, the
output of a residual add), and that observer stays at 8 bits while a layer it
feeds is kept at 8.  Every entry therefore records the bits the backend really
applied (:meth:`~haq_plugin.api.capabilities.BackendCapabilities.effective_bits`);
an entry that ran at other bits than its column's is not a measurement of that
width, and every output marks it instead of showing it as "no drop".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from torch import nn

from haq_plugin.storage import outputs
from haq_plugin.api.backend import QuantBackend, prepare_for_search
from haq_plugin.api.bits import check_width
from haq_plugin.engine.costs import CONSTRAINTS, build_cost_table
from haq_plugin.engine.space import KEPT_BITS
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.engine.backend_faults import contained
from haq_plugin.engine.backend_fit import fit_device
from haq_plugin.engine.device import resolve_device
from haq_plugin.engine.placement import Placement
from haq_plugin.engine.threads import check_threads, torch_threads
from haq_plugin.engine.evaluate import evaluate_policy, float_accuracy
from haq_plugin.api.plugins import load_backend, load_hardware
from haq_plugin.storage.rng import seed_everything
from haq_plugin.api.quantize_mode import WEIGHTS_ONLY, check_quantize, use_quantize_mode
from haq_plugin.engine.decisions import DecisionUnits, unit_key
from haq_plugin.engine.eval_fn import checked_eval_fn
from haq_plugin.engine.metric import metric_named
from haq_plugin.analyses.sensitivity_report import TARGETS, UNIT_NOUNS, LayerSensitivity, SensitivityResult

DEFAULT_BITS = (2, 3, 4)
#: What one row is, by ``decisions``.


def parse_bit_list(text: str, flag: str = "--bits") -> tuple[int, ...]:
    """``"2,3,4"`` -> (2, 3, 4)."""
    try:
        return tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise HaqError(f"{flag} {text!r}: write comma-separated bit widths, e.g. 2,3,4.") from None


def check_bit_list(bits: Iterable[Any], hardware: HardwareModel, backend: QuantBackend) -> tuple[int, ...]:
    """Distinct widths below 8 that both the hardware and the backend support, in increasing order."""
    values = list(bits)
    if not values:
        raise HaqError("Sensitivity needs at least one bit width, e.g. bits=[2, 3, 4] (--bits 2,3,4).")
    supported = sorted(set(hardware.supported_bits) & set(backend.supported_bits))
    who = f"by both hardware '{hardware.name}' and backend '{backend.name}'"
    checked = [check_width(value, "sensitivity bit width", supported, who) for value in values]
    check_width(KEPT_BITS, "the 8-bit reference", supported, who)
    if KEPT_BITS in checked or len(set(checked)) != len(checked):
        raise HaqError(f"Sensitivity bit widths {', '.join(map(str, checked))}: give each width once, without "
                       f"{KEPT_BITS} (the {KEPT_BITS}-bit reference column is always measured).")
    return tuple(sorted(checked))


def sensitivity(model: nn.Module, example_input: Any, *, hardware: HardwareModel | str,
                backend: QuantBackend | str, eval_fn: Callable[[nn.Module], float], calibration_data: Iterable[Any],
                bits: Sequence[int] = DEFAULT_BITS, constraint: str = "latency", seed: int = 0,
                output_dir: str | Path | None = None, force: bool = False, progress: bool = True,
                use_cache: bool = True, metric: str = "accuracy", decisions: str = "layer",
                quantize: str | None = None, device: str = "auto",
                threads: int | None = None) -> SensitivityResult:
    """Measure every layer's (or unit's) metric at each of ``bits``, weights and input activations separately.

    ``constraint`` chooses the cost whose per-layer share is reported.  With an
    ``output_dir`` the CSV, the heatmap and the markdown table are written there
    (a non-empty directory needs ``force``).  ``progress`` shows a bar and the
    number of evaluations on stderr before the first one.  ``metric``,
    ``decisions`` and ``quantize`` mean what they mean for
    :func:`~haq_plugin.engine.search.search` (``quantize=None``: the backend's
    current mode); weight-only measures no activation rows.  ``device`` is where
    the evaluations run and ``threads`` how many CPU threads torch uses, as for a
    search (``"auto"``: CUDA when there is one; ``threads=None``: as set).
    """
    from tqdm import tqdm

    from haq_plugin.analyses.sensitivity_report import write_sensitivity_outputs

    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    be = load_backend(backend) if isinstance(backend, str) else backend
    if constraint not in CONSTRAINTS:
        raise HaqError(f"Unknown constraint '{constraint}'. Choose one of: {', '.join(CONSTRAINTS)}.")
    checked_fn = checked_eval_fn(eval_fn, metric_named(metric))
    unit_key("layer", decisions)  # refuses an unknown way of grouping layers
    if quantize is not None:
        use_quantize_mode(be, check_quantize(quantize, "quantize"))
    targets = ("weights",) if getattr(be, "quantize", None) == WEIGHTS_ONLY else TARGETS
    widths = check_bit_list(bits, hw, be)
    layers = extract_layers(model, example_input)
    units = DecisionUnits.build(layers, decisions, fixed={})
    layer_shares = cost_shares(hw, layers, constraint, widths, use_cache)
    directory = outputs.prepare_output_dir(output_dir, resume=False, force=force) if output_dir else None
    total = len(units.names) * len(widths) * len(targets)
    if progress:
        what = " x 2 (weights, activations)" if len(targets) == 2 else " (weights only)"
        print(f"sensitivity: {len(units.names)} {UNIT_NOUNS[decisions]}s x {len(widths)} bit widths{what} = {total} "
              "evaluations, plus 1 for the uniform 8-bit reference", file=sys.stderr)
    with torch_threads(check_threads(threads)):
        start = time.perf_counter()
        seed_everything(seed)
        placement = Placement(resolve_device(fit_device(device, be)))
        model, example_input, calibration, _ = placement.place(model, example_input, list(calibration_data), None)
        with contained(be, "prepare"):
            prepare_for_search(be, model, example_input, calibration)
        placement.place_backend(be)
        eight = {layer.name: (KEPT_BITS, KEPT_BITS) for layer in layers}
        reference = evaluate_policy(be, eight, checked_fn)
        reference_applied = applied_bits(be, eight)
        rows = []
        with tqdm(total=total, desc="sensitivity", unit="eval", file=sys.stderr, disable=not progress,
                  dynamic_ncols=True) as bar:
            for u, (name, members) in enumerate(zip(units.names, units.members)):
                row = LayerSensitivity(u, name, _describe(layers, members), sum(layer_shares[i] for i in members),
                                       {}, {}, tuple(layers[i].name for i in members))
                for slot, target in enumerate(targets):
                    for width in widths:
                        pair = (width, KEPT_BITS) if slot == 0 else (KEPT_BITS, width)
                        asked = {**eight, **{member: pair for member in row.members}}
                        getattr(row, target)[width] = evaluate_policy(be, asked, checked_fn)
                        row.record_applied(target, width, asked, applied_bits(be, asked))
                        bar.update(1)
                    getattr(row, target)[KEPT_BITS] = reference
                    row.record_applied(target, KEPT_BITS, eight, reference_applied)
                rows.append(row)
        result = SensitivityResult(layers=rows, bits=widths, constraint=constraint, hardware=hw.name, backend=be.name,
                                   eight_bit_accuracy=reference, float_accuracy=float_accuracy(model, checked_fn),
                                   evaluations=total + 1, seconds=time.perf_counter() - start, output_dir=directory,
                                   metric=metric, decisions=decisions, targets=targets)
    if directory is not None:
        result.files = write_sensitivity_outputs(result)
    return result


def applied_bits(backend: QuantBackend, bits: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The (weight, input) bits ``backend`` really applies under ``bits``, layer by layer.

    Asked of :meth:`~haq_plugin.api.capabilities.BackendCapabilities.effective_bits`;
    a duck-typed backend without it is taken at its word (every layer as asked).
    """
    method = getattr(backend, "effective_bits", None)
    applied = method(bits) if callable(method) else {}
    return {name: tuple(applied.get(name, pair)) for name, pair in bits.items()}  # type: ignore[misc]


def _describe(layers: Sequence[LayerSpec], members: Sequence[int]) -> str:
    """A layer's own description, or a unit's size: ``4 layers, 16384 weights``."""
    if len(members) == 1:
        return layers[members[0]].describe()
    return f"{len(members)} layers, {sum(layers[i].params for i in members)} weights"


def cost_shares(hardware: HardwareModel, layers: Sequence[LayerSpec], constraint: str, widths: Sequence[int],
                use_cache: bool) -> list[float]:
    """Each layer's share of the uniform 8-bit policy's ``constraint`` cost."""
    table = build_cost_table(hardware, layers, bits=sorted({*widths, KEPT_BITS}), cache=use_cache)
    per_layer = table.layer_costs(constraint, [(KEPT_BITS, KEPT_BITS)] * len(layers))
    total = float(per_layer.sum())
    return [float(c) / total if total > 0 else 0.0 for c in per_layer]
