"""A ``QConfigMapping`` as plain JSON, and back, without pickles or arbitrary imports.

A QConfig holds constructors (``FakeQuantize.with_args(...)``), i.e. a class
and keyword arguments.  They are written as::

    {"class": "torch.ao.quantization.fake_quantize.FakeQuantize",
     "kwargs": {"observer": "torch.ao.quantization.observer.MinMaxObserver",
                "quant_min": 0, "quant_max": 15,
                "dtype": "torch.quint8", "qscheme": "torch.per_tensor_affine"}}

A string keyword value is a torch dtype, a torch qscheme, or a class of
``torch.ao.quantization.fake_quantize`` / ``torch.ao.quantization.observer`` /
``haq_plugin.adapters.torch_ao.qconfig`` (the weight observer, written under the name of the module
it was first defined in, ``haq_plugin.adapters._torch_ao_qconfig``, so that files stay the same across
versions); nothing else is imported when reading, so a policy file cannot run code.
Functions in ``module_name_object_type_order`` entries are named the same way
(``_operator.add``) and must come from ``operator``, ``torch`` or
``torch.nn.functional``.
"""

from __future__ import annotations

import importlib
import operator
from typing import Any, Callable

import torch
from torch.ao.quantization import QConfig, QConfigMapping

from haq_plugin.api.errors import HaqError

_CLASS_MODULES = ("torch.ao.quantization.fake_quantize", "torch.ao.quantization.observer",
                  "haq_plugin.adapters.torch_ao.qconfig")
# The file format's name of a module (stable) -> the module that defines its classes today.
_FILE_MODULES = {"haq_plugin.adapters._torch_ao_qconfig": "haq_plugin.adapters.torch_ao.qconfig"}
_FILE_NAMES = {module: name for name, module in _FILE_MODULES.items()}
_FUNCTION_MODULES = ("_operator", "operator", "torch", "torch.nn.functional")
_DTYPES = {f"torch.{name}": getattr(torch, name) for name in ("quint8", "qint8", "qint32", "float32", "float16")}
_QSCHEMES = {f"torch.{name}": getattr(torch, name) for name in (
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
    "per_channel_affine_float_qparams")}


def _dotted(obj: Any) -> str:
    return f"{_FILE_NAMES.get(obj.__module__, obj.__module__)}.{obj.__qualname__}"


def _encode_value(value: Any, where: str) -> Any:
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (torch.dtype, torch.qscheme)) and str(value) in {**_DTYPES, **_QSCHEMES}:
        return str(value)
    if isinstance(value, type) and value.__module__ in _CLASS_MODULES:
        return _dotted(value)
    raise HaqError(f"{where}: cannot write {value!r} to JSON (only numbers, torch dtypes, qschemes and "
                   f"torch.ao observer/fake-quant classes).")


def _decode_class(name: Any, where: str) -> type:
    module_name, _, attr = str(name).rpartition(".")
    module_name = _FILE_MODULES.get(module_name, module_name)
    if module_name not in _CLASS_MODULES:
        raise HaqError(f"{where}: {name!r} is not a class of {' or '.join(_CLASS_MODULES)}.")
    found = getattr(importlib.import_module(module_name), attr, None)
    if not isinstance(found, type):
        raise HaqError(f"{where}: {name!r} does not exist in this torch version.")
    return found


def _decode_value(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return value
    if value in _DTYPES:
        return _DTYPES[value]
    if value in _QSCHEMES:
        return _QSCHEMES[value]
    return _decode_class(value, where)


def encode_constructor(ctor: Any, where: str) -> dict[str, Any] | None:
    """``FakeQuantize.with_args(...)`` (or an observer class) as a JSON object."""
    if ctor is None:
        return None
    partial = getattr(ctor, "p", None)
    if partial is None:
        return {"class": _encode_value(ctor, where), "kwargs": {}}
    if getattr(ctor, "callable_args", None) or partial.args:
        raise HaqError(f"{where}: constructors with positional or callable arguments cannot be written.")
    kwargs = {key: _encode_value(val, f"{where}.{key}") for key, val in partial.keywords.items()}
    return {"class": _encode_value(partial.func, where), "kwargs": kwargs}


def decode_constructor(data: Any, where: str) -> Any:
    """The constructor written by :func:`encode_constructor`."""
    if data is None:
        return None
    if not isinstance(data, dict) or "class" not in data:
        raise HaqError(f"{where}: expected an object with 'class' and 'kwargs'.")
    cls = _decode_class(data["class"], where)
    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise HaqError(f"{where}.kwargs must be an object.")
    decoded = {key: _decode_value(val, f"{where}.kwargs.{key}") for key, val in kwargs.items()}
    return cls.with_args(**decoded)


def encode_qconfig(qconfig: QConfig | None, where: str) -> dict[str, Any] | None:
    if qconfig is None:
        return None
    return {"activation": encode_constructor(qconfig.activation, f"{where}.activation"),
            "weight": encode_constructor(qconfig.weight, f"{where}.weight")}


def decode_qconfig(data: Any, where: str) -> QConfig | None:
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"activation", "weight"}:
        raise HaqError(f"{where}: expected an object with exactly 'activation' and 'weight'.")
    return QConfig(activation=decode_constructor(data["activation"], f"{where}.activation"),
                   weight=decode_constructor(data["weight"], f"{where}.weight"))


def _function_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = f"{module}.{getattr(fn, '__name__', '')}"
    if module not in _FUNCTION_MODULES:
        raise HaqError(f"QConfigMapping: object type {fn!r} is not a function of {', '.join(_FUNCTION_MODULES)}.")
    return name


def _function(name: Any, where: str) -> Callable:
    module_name, _, attr = str(name).rpartition(".")
    if module_name not in _FUNCTION_MODULES:
        raise HaqError(f"{where}: {name!r} is not a function of {', '.join(_FUNCTION_MODULES)}.")
    module = operator if module_name in ("_operator", "operator") else importlib.import_module(module_name)
    found = getattr(module, attr, None)
    if not callable(found):
        raise HaqError(f"{where}: {name!r} does not exist.")
    return found


def mapping_to_json(mapping: QConfigMapping) -> dict[str, Any]:
    """The global, per-module-name and per-call QConfigs of ``mapping``, in their order."""
    if mapping.object_type_qconfigs or mapping.module_name_regex_qconfigs:
        raise HaqError("QConfigMapping: object_type and module_name_regex entries cannot be written; "
                       "this format holds global, module_name and module_name_object_type_order entries.")
    return {
        "global": encode_qconfig(mapping.global_qconfig, "global"),
        "module_name": [{"name": name, "qconfig": encode_qconfig(qc, f"module_name[{name}]")}
                        for name, qc in mapping.module_name_qconfigs.items()],
        "module_name_object_type_order": [
            {"module_name": path, "object_type": _function_name(fn), "index": index,
             "qconfig": encode_qconfig(qc, f"module_name_object_type_order[{path}]")}
            for (path, fn, index), qc in mapping.module_name_object_type_order_qconfigs.items()],
    }


def mapping_from_json(data: Any, source: str) -> QConfigMapping:
    """Rebuild the QConfigMapping written by :func:`mapping_to_json`."""
    if not isinstance(data, dict):
        raise HaqError(f"{source}: 'qconfig_mapping' must be an object.")
    mapping = QConfigMapping()
    if data.get("global") is not None:
        mapping.set_global(decode_qconfig(data["global"], f"{source}: global"))
    for i, entry in enumerate(data.get("module_name", [])):
        where = f"{source}: module_name[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise HaqError(f"{where} must be an object with 'name' and 'qconfig'.")
        mapping.set_module_name(str(entry["name"]), decode_qconfig(entry.get("qconfig"), where))
    for i, entry in enumerate(data.get("module_name_object_type_order", [])):
        where = f"{source}: module_name_object_type_order[{i}]"
        if not isinstance(entry, dict) or not {"module_name", "object_type", "index"} <= set(entry):
            raise HaqError(f"{where} must have 'module_name', 'object_type', 'index' and 'qconfig'.")
        mapping.set_module_name_object_type_order(
            str(entry["module_name"]), _function(entry["object_type"], where), int(entry["index"]),
            decode_qconfig(entry.get("qconfig"), where))
    return mapping
