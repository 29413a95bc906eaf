"""The held-out test accuracy of a searched policy: the one figure every quality benchmark reports.

The policy is re-applied on a freshly prepared backend with the search's
backend options (``weight_range``, ...), in the search's quantize mode and
with the search's finetuning (the same batches in the same
order from the same weights), and evaluated on the test split the search
never saw.
"""

from __future__ import annotations

from typing import Any

from haq_plugin.api.backend import prepare_for_search
from haq_plugin.api.plugins import load_backend
from haq_plugin.api.quantize_mode import use_quantize_mode
from haq_plugin.cli.search_cmd import stored_options
from haq_plugin.engine.evaluate import evaluate_policy
from haq_plugin.engine.results import SearchResult


def held_out_accuracy(task: Any, backend_name: str, result: SearchResult) -> float:
    """Test accuracy of ``result``'s policy on ``task`` (a :class:`~haq_plugin.tasks.demo.DemoTask`)."""
    backend = load_backend(backend_name, **stored_options(result.backend.config))
    use_quantize_mode(backend, result.settings.quantize)
    prepare_for_search(backend, task.model, task.example_input, task.calibration_data)
    return evaluate_policy(backend, result.policy.bits, task.test_eval_fn, result.settings.finetune_steps,
                           task.train_data)
