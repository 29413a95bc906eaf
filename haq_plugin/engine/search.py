"""The HAQ search: find per-layer bits that maximise accuracy within a hardware budget.

:func:`search` extracts the layers, builds the hardware cost table, runs episodes
of the :class:`~haq_plugin.engine.environment.QuantizationEnv` with a strategy that
proposes bits (``ddpg``: HAQ's agent; ``random``: random actions through the same
budget enforcement, the baseline a learned search must beat; ``uniform``: only
the highest uniform width that fits), evaluates every policy through the
backend, and returns the most accurate policy within the budget beside the best
uniform one.

Episodes run in rounds: one episode per round by default, HAQ's sequential
loop; with ``workers=N`` each round's N policies are evaluated at once on Ray
actors (:mod:`haq_plugin.engine.workers`) before the agent learns from all N.  The
models and batches run on ``device`` (:mod:`haq_plugin.engine.device`).

Determinism: the global generators (Python, NumPy, PyTorch) are seeded with
``seed`` and the agent owns generators seeded from it, so the same inputs (and
the same N) give the same policy bit for bit.  With an ``output_dir`` the state
is checkpointed after every round (:mod:`haq_plugin.storage.checkpoint`) and the directory is locked
while the search runs (:mod:`haq_plugin.storage.outputs`); ``resume=True`` ends with the
same policy as an uninterrupted run (the episode count may be raised).

Ctrl-C raises :class:`SearchInterrupted` (a ``KeyboardInterrupt`` carrying the
partial result); an ``eval_fn`` failing in a later episode raises
:class:`~haq_plugin.engine.eval_fn.EvaluationError`.  Either way the finished
episodes are in the checkpoint and ``episodes.csv``.  The package exports the function as
``haq_plugin.search`` and its types (``haq_plugin.SearchResult`` ...).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from haq_plugin.api.backend import QuantBackend
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.plugins import load_backend, load_hardware
from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.engine.backend_fit import fit_device, fit_settings
from haq_plugin.engine.device import resolve_device
from haq_plugin.engine.threads import check_threads, threads_note, torch_threads
from haq_plugin.engine.placement import Placement
from haq_plugin.engine.results import SearchResult
from haq_plugin.engine.rounds import SearchRun
from haq_plugin.engine.settings import DEFAULT_BUDGET, DEFAULT_EPISODES, SearchSettings
from haq_plugin.engine.workers import require_ray

__all__ = ["run_search", "search"]


def search(model: nn.Module, example_input: Any, *, hardware: HardwareModel | str,
           backend: QuantBackend | str, constraint: str = "latency", budget: float | str = DEFAULT_BUDGET,
           eval_fn: Callable[[nn.Module], float], calibration_data: Iterable[Any],
           train_data: Iterable[Any] | None = None, finetune_steps: int = 0, episodes: int = DEFAULT_EPISODES,
           strategy: str = "ddpg", min_bits: int = 2, max_bits: int = 8, keep_first_layer_8bit: bool = True,
           keep_last_layer_8bit: bool = True, pins: Mapping[str, tuple[int, int]] | None = None, seed: int = 0,
           output_dir: str | Path | None = None, resume: bool = False, force: bool = False,
           progress: bool = True, ddpg: DDPGConfig = DDPGConfig(), float_accuracy: float | None = None,
           use_cache: bool = True, task: Mapping[str, Any] | None = None, quantize: str | None = None,
           workers: int = 1, device: str = "auto", ray_address: str | None = None, metric: str = "accuracy",
           decisions: str = "layer", bits_per_weight: float | None = None, threads: int | None = None
           ) -> SearchResult:
    """Search per-layer (weight, activation) bits for ``model`` under a hardware budget.

    ``budget`` is a fraction of the uniform 8-bit (w8/a8) cost of ``constraint``
    (latency, energy, size or bops) on ``hardware``, or under ``size`` stored bits
    per weight (``"3.5bpw"``, the same as ``bits_per_weight=3.5``).  ``eval_fn(model)``
    returns accuracy in percent (0 to 100), or with ``metric="perplexity"`` a
    perplexity; the reward of a policy is 0.1 x (its score - the float model's)
    (:mod:`haq_plugin.engine.metric`).  ``decisions`` (layer, block, role) groups
    layers that share their bits (:mod:`haq_plugin.engine.decisions`).  ``hardware`` and ``backend`` are instances or
    registered names.  ``force`` lets a new search write into a non-empty
    ``output_dir``; ``use_cache=False`` re-simulates the cost table instead of
    reading the disk cache.  See the module docstring for strategies,
    determinism, outputs and interruption.  ``task`` is a free-form,
    JSON-serialisable description of the model and data (the CLI stores its
    ``--model``/``--data`` there) and is kept for resume and provenance.  ``quantize`` is
    ``"weights+activations"`` or ``"weights"`` (activations stay float and only
    weight bits are searched; the default under ``constraint="size"``).  ``workers`` above 1
    evaluates each round of that many episodes in parallel on Ray actors
    (:mod:`haq_plugin.engine.workers`; ``ray_address`` joins an existing cluster), and ``device``
    (auto, cpu, cuda, cuda:N) is where the models and batches run; ``eval_fn`` receives the
    model there (:func:`haq_plugin.engine.device.on_model_device` moves a batch to it).  ``threads``
    sets torch's CPU threads for the search (None: as set; :mod:`haq_plugin.engine.threads`).  The settings
    are described field by field in :class:`~haq_plugin.engine.settings.SearchSettings`.
    """
    settings = SearchSettings(
        constraint=constraint, budget=budget, episodes=episodes, strategy=strategy, min_bits=min_bits,
        max_bits=max_bits, keep_first_layer_8bit=keep_first_layer_8bit, keep_last_layer_8bit=keep_last_layer_8bit,
        pins=dict(pins or {}), finetune_steps=finetune_steps, seed=seed, ddpg=ddpg, float_accuracy=float_accuracy,
        task=dict(task or {}), quantize=quantize, workers=workers, metric=metric, decisions=decisions,
        bits_per_weight=bits_per_weight)
    return run_search(model, example_input, settings, hardware=hardware, backend=backend, eval_fn=eval_fn,
                      calibration_data=calibration_data, train_data=train_data, output_dir=output_dir,
                      resume=resume, force=force, progress=progress, use_cache=use_cache, device=device,
                      ray_address=ray_address, threads=threads)


def run_search(model: nn.Module, example_input: Any, settings: SearchSettings, *,
               hardware: HardwareModel | str, backend: QuantBackend | str,
               eval_fn: Callable[[nn.Module], float], calibration_data: Iterable[Any],
               train_data: Iterable[Any] | None = None, output_dir: str | Path | None = None,
               resume: bool = False, force: bool = False, progress: bool = True,
               use_cache: bool = True, device: str = "auto", ray_address: str | None = None,
               threads: int | None = None) -> SearchResult:
    """:func:`search` with its settings as one :class:`SearchSettings` (what the command line calls).

    The settings are first fitted to the backend's declared capabilities (:func:`fit_settings`).
    """
    threads = check_threads(threads)
    backend = _resolve(backend, QuantBackend, load_backend, "backend")
    settings = fit_settings(settings, backend)
    placement = Placement(resolve_device(fit_device(device, backend)), ray_address)
    if settings.workers > 1:
        require_ray(settings.workers)
    if not isinstance(model, nn.Module):
        raise HaqError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if settings.finetune_steps and train_data is None:
        raise HaqError(f"finetune_steps={settings.finetune_steps} needs train_data (batches of (inputs, targets)).")
    if resume and output_dir is None:
        raise HaqError("resume=True needs the output_dir of the search to continue.")
    if calibration_data is None:
        raise HaqError("calibration_data is None; give an iterable of input batches (tensors or (x, y) pairs).")
    run = SearchRun(model=model, example_input=example_input, settings=settings,
                    hardware=_resolve(hardware, HardwareModel, load_hardware, "hardware"),
                    backend=backend,
                    eval_fn=eval_fn, calibration_data=calibration_data, train_data=train_data,
                    progress=progress, use_cache=use_cache, placement=placement)
    with torch_threads(threads) as in_use:
        if progress:
            print(threads_note(in_use), file=sys.stderr)
        return run.execute(output_dir=output_dir, resume=resume, force=force)


def _resolve(value: Any, base: type, load: Callable[[str], Any], what: str) -> Any:
    """An instance as given, or the plugin registered under that name."""
    if isinstance(value, str):
        return load(value)
    if isinstance(value, base):
        return value
    raise HaqError(f"{what} must be a {base.__name__} or a registered name, got {type(value).__name__}.")
