import pytest
import torch

from haq_plugin import extract_layers
from haq_plugin.tasks.demo import SHIPPED_WEIGHTS, TrainSettings, demo_cache_key, digits_splits, load_demo


def test_fixed_split_sizes_and_disjointness():
    splits = digits_splits()
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 1078, "val": 359, "test": 360}
    again = digits_splits()
    assert torch.equal(splits["test"][0], again["test"][0])  # seeded, not random per call
    assert float(splits["train"][0].max()) == 1.0 and float(splits["train"][0].min()) == 0.0


def test_demo_model_is_accurate_cached_and_has_depthwise_layers():
    task = load_demo()
    assert task.float_test_accuracy >= 95.0
    assert task.float_val_accuracy >= 95.0
    again = load_demo()
    assert not again.trained_now  # second load comes from the cache
    assert again.float_test_accuracy == task.float_test_accuracy
    layers = extract_layers(task.model, task.example_input)
    assert len(layers) == 14 and sum(l.is_depthwise for l in layers) == 4


def test_cache_key_follows_training_settings():
    assert demo_cache_key(TrainSettings()) == demo_cache_key(TrainSettings())
    assert demo_cache_key(TrainSettings(epochs=16)) != demo_cache_key(TrainSettings())


def test_the_default_demo_weights_ship_with_the_package_and_give_the_same_model_everywhere():
    """Training differs between CPUs; the shipped weights do not. If this fails after a change to the
    demo network or its training, retrain (``HAQ_PLUGIN_CACHE=/tmp/d python -c "from haq_plugin.tasks.demo
    import load_demo; load_demo()"``) and replace the file in ``haq_plugin/tasks/data/`` with the new one."""
    task = load_demo()
    assert task.origin == "shipped", f"no shipped weights named {demo_cache_key(TrainSettings())}"
    assert not task.trained_now and task.info["cache_file"].startswith(str(SHIPPED_WEIGHTS))
    assert task.float_val_accuracy == pytest.approx(97.493, abs=1e-3)  # 350 of 359
    assert task.float_test_accuracy == pytest.approx(98.056, abs=1e-3)  # 353 of 360
