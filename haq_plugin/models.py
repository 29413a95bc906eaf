"""Resolving ``--model`` and ``--data`` into a model, an example input and data.

``--model`` accepts:

* ``demo`` (default): the embedded demo (see :mod:`haq_plugin.demo`);
* ``zoo:NAME``: a reference network with ImageNet shapes (:mod:`haq_plugin.zoo`);
* ``package.module:callable``: your own.  The callable takes no arguments and
  returns either an ``nn.Module`` (then give ``--input-shape``) or a
  ``(module, example_input)`` pair.

``--data package.module:callable`` (your own data) returns a mapping (or an
object with these attributes):

* ``calibration_data``: an iterable of input batches (tensors, or ``(x, y)``);
* ``eval_fn``: ``model -> accuracy in percent``, **or** ``val_data``: an
  iterable of ``(x, y)`` batches from which top-1 accuracy is computed;
* ``train_data`` (optional): ``(x, y)`` batches for ``--finetune-steps``.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from haq_plugin.errors import HaqError


@dataclass
class ModelSource:
    """A model ready for analysis, with where it came from."""

    model: nn.Module
    example_input: Any
    label: str


@dataclass
class TaskData:
    """Data a search needs besides the model."""

    calibration_data: list[Any]
    eval_fn: Callable[[nn.Module], float]
    train_data: list[Any] | None = None
    test_eval_fn: Callable[[nn.Module], float] | None = None
    description: str = ""


@functools.lru_cache(maxsize=1)
def _demo_task() -> Any:
    """The demo task, loaded (or trained) once per process for --model and --data alike."""
    from haq_plugin.demo import load_demo

    return load_demo()


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``1,3,224,224`` or ``1x3x224x224`` -> tuple of ints."""
    if text is None:
        return None
    parts = re.split(r"[,x]", text.strip())
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise HaqError(f"--input-shape {text!r} is not a shape; write positive integers like 1,3,224,224.")
    return shape


def import_callable(spec: str, flag: str) -> Callable[..., Any]:
    """Import ``package.module:callable`` (the current directory is importable, like python -m)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HaqError(f"{flag} {spec!r}: expected 'package.module:callable'.")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HaqError(f"{flag} {spec!r}: cannot import module '{module_name}' "
                       f"({type(exc).__name__}: {exc}).") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HaqError(f"{flag} {spec!r}: module '{module_name}' has no attribute '{attr}'.")
    if not callable(target):
        raise HaqError(f"{flag} {spec!r}: '{attr}' is not callable.")
    return target


def load_model(spec: str = "demo", input_shape: str | None = None) -> ModelSource:
    """Resolve a ``--model`` value (see module docstring)."""
    shape = parse_input_shape(input_shape)
    if spec == "demo":
        task = _demo_task()
        return ModelSource(task.model, task.example_input, "demo (MobileNet-V2-style, UCI digits)")
    if spec.startswith("zoo:"):
        from haq_plugin.zoo import IMAGENET_INPUT_SHAPE, ZOO

        name = spec[4:]
        if name not in ZOO:
            raise HaqError(f"--model {spec!r}: unknown zoo network '{name}'. Available: "
                           + ", ".join(f"zoo:{n}" for n in ZOO) + ".")
        return ModelSource(ZOO[name]().eval(), torch.zeros(shape or IMAGENET_INPUT_SHAPE), spec)
    factory = import_callable(spec, "--model")
    try:
        made = factory()
    except Exception as exc:
        raise HaqError(f"--model {spec!r}: the callable raised {type(exc).__name__}: {exc}") from None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, example = made
        if shape is not None:
            example = torch.zeros(shape)
    elif isinstance(made, nn.Module):
        if shape is None:
            raise HaqError(f"--model {spec!r} returned a module without an example input; give --input-shape "
                           "(e.g. 1,3,224,224) or return (model, example_input).")
        model, example = made, torch.zeros(shape)
    else:
        raise HaqError(f"--model {spec!r} returned {type(made).__name__}; expected an nn.Module or a "
                       "(module, example_input) pair.")
    return ModelSource(model.eval(), example, spec)


def top1_eval_fn(val_data: Iterable[Any]) -> Callable[[nn.Module], float]:
    """Top-1 accuracy (percent) over (x, y) batches."""
    batches = list(val_data)

    def evaluate(model: nn.Module) -> float:
        correct = total = 0
        with torch.no_grad():
            for x, y in batches:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return 100.0 * correct / max(total, 1)
    return evaluate


def load_task_data(spec: str | None, model_spec: str) -> TaskData:
    """Resolve ``--data``: the demo's data for the demo model, else the user's callable."""
    if spec is None:
        if model_spec != "demo":
            raise HaqError(f"--model {model_spec!r} needs --data package.module:callable returning "
                           "calibration_data and eval_fn (or val_data); see README 'Bring your own model'.")
        task = _demo_task()
        origin = f"trained in {task.train_seconds:.0f} s" if task.trained_now else "loaded from the cache"
        description = (f"demo float model ({origin}, {task.info['cache_file']}): test accuracy "
                       f"{task.float_test_accuracy:.2f}%, validation accuracy {task.float_val_accuracy:.2f}%")
        return TaskData(task.calibration_data, task.eval_fn, task.train_data, task.test_eval_fn, description)
    made = import_callable(spec, "--data")()
    get = (lambda k: made.get(k)) if isinstance(made, dict) else (lambda k: getattr(made, k, None))
    calibration = get("calibration_data")
    if calibration is None:
        raise HaqError(f"--data {spec!r} returned no 'calibration_data'.")
    eval_fn = get("eval_fn")
    if eval_fn is None:
        val_data = get("val_data")
        if val_data is None:
            raise HaqError(f"--data {spec!r} returned neither 'eval_fn' nor 'val_data'.")
        eval_fn = top1_eval_fn(val_data)
    train = get("train_data")
    return TaskData(list(calibration), eval_fn, list(train) if train is not None else None)
