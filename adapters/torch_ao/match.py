"""Whether a loaded QConfigMapping fits the model it is about to be applied to.

``prepare_qat_fx`` matches a mapping's ``module_name`` entries against the
model silently: a name the model lacks is ignored, and a layer the mapping does
not name falls back to the global QConfig (8 bits).  A model whose layers were
renamed since the search therefore trains with the wrong bits and no notice.
These helpers find such names so that the loader can say so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn
from torch.ao.quantization import QConfigMapping

from haq_plugin.api.layers import QUANTIZABLE_TYPES


def has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def unmatched_layers(mapping: QConfigMapping, model: nn.Module) -> tuple[list[str], list[str]]:
    """Layer names of ``mapping`` that ``model`` lacks, and ``model``'s Conv/Linear layers it does not name."""
    named = list(mapping.module_name_qconfigs)
    lacking = [name for name in named if not has_submodule(model, name)]
    unnamed = [name for name, module in model.named_modules()
               if isinstance(module, QUANTIZABLE_TYPES) and name not in mapping.module_name_qconfigs]
    return lacking, unnamed


def warn_unmatched_layers(mapping: QConfigMapping, model: nn.Module, source: str | Path) -> None:
    """A ``UserWarning`` naming the layers of ``mapping`` that ``model`` lacks (nothing when all are there)."""
    lacking, unnamed = unmatched_layers(mapping, model)
    if not lacking:
        return
    others = (f"; the model's layer(s) {', '.join(unnamed)} are not in it and would get the global QConfig "
              "(8 bits)") if unnamed else ""
    warnings.warn(f"{source} names layer(s) this model lacks: {', '.join(lacking)}{others}. Was the policy "
                  "searched on another model, or were layers renamed since? Search again on this model, or "
                  "pass example_input too so that the mapping is rebuilt and checked exactly.",
                  UserWarning, stacklevel=3)
