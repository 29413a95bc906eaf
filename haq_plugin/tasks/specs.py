"""Resolving ``--model`` and ``--data`` into a model, an example input and data.

``--model`` accepts:

* ``demo`` (default): the embedded demo (see :mod:`haq_plugin.tasks.demo`);
* ``zoo:NAME``: a reference network with ImageNet shapes (:mod:`haq_plugin.tasks.zoo`);
* ``llm:NAME``, ``hf:DIR``, ``gguf:FILE``: a language model (:mod:`haq_plugin.tasks.llm`), with
  ``--data text:pydoc`` (the default) or ``text:FILE`` and ``--data-option`` for its token windows;
* ``package.module:callable``: your own.  The callable takes no arguments and
  returns either an ``nn.Module`` (then give ``--input-shape``) or a
  ``(module, example_input)`` pair.

``--data package.module:callable`` (your own data) returns a mapping (or an
object with these attributes):

* ``calibration_data``: an iterable of input batches (tensors, or ``(x, y)``);
* ``eval_fn``: ``model -> accuracy in percent``, **or** ``val_data``: an
  iterable of ``(x, y)`` batches from which top-1 accuracy is computed;
* ``train_data`` (optional): ``(x, y)`` batches for ``--finetune-steps``;
* ``test_eval_fn`` or ``test_data`` (optional), like ``eval_fn`` and ``val_data``: a
  held-out split that the search never sees, measured once on the result so that
  ``search`` and ``sweep`` report an accuracy the policy was not selected on.

Any other key of a mapping is refused: a misspelt ``test_data`` would otherwise
leave the report without its test column and say nothing.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from haq_plugin.engine.device import BatchesOnDevice, model_device
from haq_plugin.api.errors import HaqError, one_line
from haq_plugin.api.layers import describe_input, run_forward
from haq_plugin.tasks.llm.spec import DEFAULT_DATA, batch_size, is_language_model, language_model_task
from haq_plugin.tasks.validation import as_batches, short_repr

DATA_KEYS = ("calibration_data", "eval_fn", "val_data", "train_data", "test_eval_fn", "test_data")
#: for each batches key, the key of the function a user gives instead for outputs other than class scores
OWN_EVAL_FN = {"val_data": "eval_fn", "test_data": "test_eval_fn"}


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
    from haq_plugin.tasks.demo import load_demo

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
        raise HaqError(f"{flag} {spec!r}: cannot import module '{module_name}' ({type(exc).__name__}: {exc}). "
                       f"The module must be importable from the current directory ({cwd}) or PYTHONPATH; "
                       "to resume a search, run it from the directory the search was started in.") from None
    except SystemExit as exc:  # a module that runs argparse or sys.exit() at import time
        raise HaqError(f"{flag} {spec!r}: importing module '{module_name}' called sys.exit({exc.code!r}); "
                       "move its command-line code under 'if __name__ == \"__main__\":'.") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HaqError(f"{flag} {spec!r}: module '{module_name}' has no attribute '{attr}'.")
    if not callable(target):
        raise HaqError(f"{flag} {spec!r}: '{attr}' is not callable.")
    return target


def load_model(spec: str = "demo", input_shape: str | None = None, data_spec: str | None = None,
               data_options: Mapping[str, Any] | None = None) -> ModelSource:
    """Resolve a ``--model`` value (see module docstring); a language model's example input is a text window."""
    if is_language_model(spec):
        task = language_model_task(spec, data_spec, data_options)
        return ModelSource(task.model, task.example_input, f"{task.language_model.name} ({spec})")
    shape = parse_input_shape(input_shape)
    if spec == "demo":
        task = _demo_task()
        return ModelSource(task.model, task.example_input, "demo (MobileNet-V2-style, UCI digits)")
    if spec.startswith("zoo:"):
        from haq_plugin.tasks.zoo import IMAGENET_INPUT_SHAPE, ZOO

        name = spec[4:]
        if name not in ZOO:
            raise HaqError(f"--model {spec!r}: unknown zoo network '{name}'. Available: "
                           + ", ".join(f"zoo:{n}" for n in ZOO) + ".")
        return ModelSource(ZOO[name]().eval(), torch.zeros(shape or IMAGENET_INPUT_SHAPE), spec)
    made = call_user_callable(spec, "--model")
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


def call_user_callable(spec: str, flag: str) -> Any:
    """Import and call a ``package.module:callable``; whatever it raises becomes :class:`HaqError`."""
    factory = import_callable(spec, flag)
    try:
        return factory()
    except HaqError:
        raise
    except Exception as exc:
        raise HaqError(f"{flag} {spec!r}: the callable raised {type(exc).__name__}: {exc}") from None
    except SystemExit as exc:
        raise HaqError(f"{flag} {spec!r}: the callable called sys.exit({exc.code!r}).") from None


def top1_eval_fn(val_data: Iterable[Any], item: str = "val_data") -> Callable[[nn.Module], float]:
    """Top-1 accuracy (percent) over (x, y) batches; empty or malformed batches are refused up front.

    ``item`` (``"val_data"`` or ``"test_data"``) names the batches in every message.
    """
    batches = as_batches(val_data, item)
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise HaqError(f"{item} batch {i} is {type(batch).__name__}; each batch must be an "
                           "(inputs, labels) pair.")

    placed = BatchesOnDevice(batches)

    def evaluate(model: nn.Module) -> float:
        correct = total = 0
        for i, (x, y) in enumerate(placed.on(model_device(model))):
            scores = run_forward(model, x, f"{item} batch {i}")
            correct += _correct_predictions(scores, y, f"{item} batch {i}", OWN_EVAL_FN.get(item, "eval_fn"))
            total += len(y)
        if total == 0:
            raise HaqError(f"{item} has no labels (every batch is empty); an accuracy of nothing is meaningless.")
        return 100.0 * correct / total
    return evaluate


def _correct_predictions(scores: Any, labels: Any, batch: str, own_eval_fn: str) -> int:
    """How many rows of ``scores`` have their largest entry at ``labels``; a mismatch is a clear error."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = describe_input(scores)
        raise HaqError(f"{batch}: the model returned {shape}; top-1 accuracy needs class scores "
                       f"of shape (batch, classes). Return '{own_eval_fn}' from --data for other outputs.")
    labels = torch.as_tensor(labels)
    if labels.shape != scores.shape[:1]:
        raise HaqError(f"{batch}: the labels have shape {describe_input(labels)} but the model "
                       f"returned scores for {scores.shape[0]} samples; give one class index per sample.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise HaqError(f"{batch}: the labels are {labels.dtype}; give integer class indices.")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < scores.shape[1]:
        raise HaqError(f"{batch}: labels range {int(labels.min())}..{int(labels.max())}, but the "
                       f"model has {scores.shape[1]} outputs (classes 0..{scores.shape[1] - 1}).")
    return int((scores.argmax(1) == labels).sum())


def load_task_data(spec: str | None, model_spec: str, data_options: Mapping[str, Any] | None = None) -> TaskData:
    """Resolve ``--data``: the demo's data for the demo model, text windows for a language model, else the user's."""
    if is_language_model(model_spec):
        return _language_model_data(model_spec, spec, data_options)
    if spec is None:
        if model_spec != "demo":
            raise HaqError(f"--model {model_spec!r} needs --data package.module:callable returning "
                           "calibration_data and eval_fn (or val_data); see README 'Bring your own model'.")
        task = _demo_task()
        origin = {"trained": f"trained in {task.train_seconds:.0f} s", "cache": "loaded from the cache",
                  "shipped": "shipped with haq-plugin"}[task.origin]
        description = (f"demo float model ({origin}, {task.info['cache_file']}): test accuracy "
                       f"{task.float_test_accuracy:.2f}%, validation accuracy {task.float_val_accuracy:.2f}%")
        return TaskData(task.calibration_data, task.eval_fn, task.train_data, task.test_eval_fn, description)
    return _user_task_data(spec)


def _user_task_data(spec: str) -> TaskData:
    """Call the user's ``--data`` callable and check what it returned (see the module docstring)."""
    made = call_user_callable(spec, "--data")
    if isinstance(made, Mapping):
        _refuse_unknown_keys(spec, made)
        get = made.get
    elif any(hasattr(made, key) for key in DATA_KEYS):
        get = lambda key: getattr(made, key, None)  # noqa: E731
    else:
        raise HaqError(f"--data {spec!r} returned {type(made).__name__} {short_repr(made)}; expected a dict (or an "
                       "object) with 'calibration_data' and 'eval_fn' or 'val_data' (see README 'Bring your "
                       "own model').")
    calibration = get("calibration_data")
    if calibration is None:
        raise HaqError(f"--data {spec!r} returned no 'calibration_data' (it has: {_keys(made)}).")
    calibration = _prefixed(spec, lambda: as_batches(calibration, "calibration_data"))
    eval_fn = _evaluation(spec, get, "val_data")
    if eval_fn is None:
        raise HaqError(f"--data {spec!r} returned neither 'eval_fn' nor 'val_data' (it has: {_keys(made)}).")
    train = get("train_data")
    if train is not None:
        train = _prefixed(spec, lambda: as_batches(train, "train_data"))
    return TaskData(calibration, eval_fn, train, _evaluation(spec, get, "test_data"))


def _refuse_unknown_keys(spec: str, made: Mapping[Any, Any]) -> None:
    """A key the search does not read is a mistake (a typo, or a split meant for the report): say so."""
    unknown = [key for key in made if key not in DATA_KEYS]
    if unknown:
        raise HaqError(f"--data {spec!r} returned unknown key(s) {', '.join(map(repr, unknown))}; the allowed "
                       f"keys are {', '.join(DATA_KEYS)}.")


def _evaluation(spec: str, get: Callable[[str], Any], item: str) -> Callable[[nn.Module], float] | None:
    """The user's own function for ``item``'s split if given, else top-1 accuracy on its batches, else None."""
    key = OWN_EVAL_FN[item]
    eval_fn = get(key)
    if eval_fn is None:
        batches = get(item)
        return None if batches is None else _prefixed(spec, lambda: top1_eval_fn(batches, item))
    if not callable(eval_fn):
        raise HaqError(f"--data {spec!r}: '{key}' is {type(eval_fn).__name__}, not a function model -> accuracy.")
    return eval_fn if item == "val_data" else _blamed(eval_fn, key)


def _blamed(eval_fn: Callable[[nn.Module], float], key: str) -> Callable[[nn.Module], float]:
    """``eval_fn`` whose exception names ``key``: the report's test evaluation runs through the backend,
    which would otherwise be blamed for the user's function (the search checks ``eval_fn`` itself)."""
    def evaluate(model: nn.Module) -> float:
        try:
            return eval_fn(model)
        except HaqError:
            raise
        except Exception as exc:
            raise HaqError(f"{key} raised {one_line(exc)}.") from None
    return evaluate


def _language_model_data(model_spec: str, spec: str | None, options: Mapping[str, Any] | None) -> TaskData:
    """Calibration windows, val perplexity for the search and test perplexity for the report."""
    task = language_model_task(model_spec, spec, options)
    size = batch_size(options)
    windows = task.windows
    calibration = list(windows.calibration.split(1)) or [task.example_input]
    tokens = windows.tokens
    description = (f"{task.language_model.name}: {windows.total_tokens} tokens of {spec or DEFAULT_DATA}, windows of "
                   f"{windows.window}: {tokens['val']} val, {tokens['test']} test, {tokens['calibration']} "
                   "calibration tokens")
    return TaskData(calibration, task.val_eval_fn(size), None, task.test_eval_fn(size), description)


def _prefixed(spec: str, check: Callable[[], Any]) -> Any:
    """Run ``check``; its :class:`HaqError` gets the ``--data`` spec in front."""
    try:
        return check()
    except HaqError as exc:
        raise HaqError(f"--data {spec!r}: {exc}") from None


def _keys(made: Any) -> str:
    keys = list(made) if isinstance(made, Mapping) else [k for k in DATA_KEYS if hasattr(made, k)]
    return ", ".join(map(str, keys)) or "nothing"

