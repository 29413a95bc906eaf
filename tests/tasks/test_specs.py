"""Loading and checking a user's model and data through the Python API (haq_plugin.tasks.specs, .validation)."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch import nn

from haq_plugin import HaqError
from haq_plugin.tasks.demo import TrainSettings, load_demo
from haq_plugin.tasks.specs import load_task_data, top1_eval_fn
from haq_plugin.tasks.validation import check_accuracy, check_task_data


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.fixture
def model():
    return small_model()


def inputs(n: int = 6, channels: int = 3) -> torch.Tensor:
    return torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(1))


def test_top1_accuracy_counts_matching_predictions(model):
    x = inputs()
    predicted = model(x).argmax(1)
    labels = predicted.clone()
    labels[:2] = (labels[:2] + 1) % 3  # two wrong out of six
    assert top1_eval_fn([(x[:4], labels[:4]), (x[4:], labels[4:])])(model) == pytest.approx(400 / 6)


@pytest.mark.parametrize("val_data, message", [
    ([], "val_data is empty"),
    (None, "val_data is missing"),
    (5, "val_data must be an iterable of batches"),
    ([inputs()], r"val_data batch 0 is Tensor; each batch must be an \(inputs, labels\) pair"),
])
def test_validation_data_that_cannot_give_an_accuracy_is_refused_when_loaded(val_data, message):
    with pytest.raises(HaqError, match=message):
        top1_eval_fn(val_data)


@pytest.mark.parametrize("labels, message", [
    (torch.zeros(5, dtype=torch.long), r"labels have shape 5 but the model returned scores for 6 samples"),
    (torch.tensor([0, 1, 2, 0, 1, 7]), r"labels range 0..7, but the model has 3 outputs"),
    (torch.zeros(6), "labels are torch.float32; give integer class indices"),
])
def test_labels_that_do_not_match_the_outputs(model, labels, message):
    with pytest.raises(HaqError, match=message):
        top1_eval_fn([(inputs(), labels)])(model)


def test_validation_batches_of_the_wrong_shape_name_the_batch(model):
    evaluate = top1_eval_fn([(inputs(), torch.zeros(6, dtype=torch.long)), (inputs(2, 1), torch.zeros(2))])
    with pytest.raises(HaqError, match=r"forward pass failed on val_data batch 1 \(shape 2x1x8x8\).*3 channels"):
        evaluate(model)


def test_check_task_data_returns_the_float_accuracy(model):
    x = inputs()
    labels = model(x).argmax(1)
    labels[0] = (labels[0] + 1) % 3
    accuracy = check_task_data(model, [x], top1_eval_fn([(x, labels)]))
    assert accuracy == pytest.approx(500 / 6)
    assert model.training is False
    # a given float accuracy is checked, and eval_fn is then not called at all
    assert check_task_data(model, [(x, labels)], lambda m: 1 / 0, float_accuracy=75) == 75.0


@pytest.mark.parametrize("calibration, message", [
    ([], "calibration_data is empty"),
    (None, "calibration_data is missing"),
    (3, "calibration_data must be an iterable"),
    ([inputs(4, 1)], r"forward pass failed on the first calibration_data batch \(shape 4x1x8x8\)"),
    ([(inputs(4, 5), torch.zeros(4))], r"first calibration_data batch \(shape 4x5x8x8\)"),
])
def test_calibration_data_is_checked_on_the_model(model, calibration, message):
    with pytest.raises(HaqError, match=message):
        check_task_data(model, calibration, lambda m: 50.0)


@pytest.mark.parametrize("eval_fn, message", [
    (lambda m: 1 / 0, "eval_fn on the float model raised ZeroDivisionError"),
    (lambda m: "93%", r"returned '93%' \(str\)"),
    (lambda m: None, r"returned None \(NoneType\)"),
    (lambda m: math.nan, "returned NaN"),
    (lambda m: 130.0, "returned 130, outside 0..100"),
    (lambda m: -1, "returned -1, outside 0..100"),
    (lambda m: 0.0, "returned 0.0%"),
    (lambda m: True, r"returned True \(bool\)"),
    ("accuracy", "eval_fn must be a function"),
])
def test_an_evaluation_that_gives_no_meaningful_accuracy_is_refused(model, eval_fn, message):
    with pytest.raises(HaqError, match=message):
        check_task_data(model, [inputs()], eval_fn)


def test_tensor_and_numpy_scalars_are_accuracies():
    import numpy as np

    assert check_accuracy(torch.tensor(87.5), "eval_fn") == 87.5
    assert check_accuracy(np.float32(12.5), "eval_fn") == 12.5
    with pytest.raises(HaqError, match="returned Tensor"):
        check_accuracy(torch.tensor([1.0, 2.0]), "eval_fn")


def test_data_callable_results_through_load_task_data(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(textwrap.dedent("""
        import torch

        class Holder:
            calibration_data = [torch.zeros(2, 3, 8, 8)]
            eval_fn = staticmethod(lambda m: 50.0)

        def as_object():
            return Holder()

        def nothing():
            return None

        def wrong_keys():
            return {"calib": [1]}

        def eval_not_callable():
            return {"calibration_data": [torch.zeros(1)], "eval_fn": 3}

        def generator_calibration():
            return {"calibration_data": (torch.zeros(1, 3, 8, 8) for _ in range(3)), "eval_fn": lambda m: 1.0}

        def exits():
            raise SystemExit(0)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_task_data("userdata:as_object", "userdata:model")
    assert len(data.calibration_data) == 1 and data.eval_fn(None) == 50.0
    assert len(load_task_data("userdata:generator_calibration", "m").calibration_data) == 3
    for spec, message in [("userdata:nothing", "returned NoneType None; expected a dict"),
                          ("userdata:wrong_keys", r"unknown key\(s\) 'calib'; the allowed keys are "
                                                  "calibration_data, eval_fn, val_data, train_data"),
                          ("userdata:eval_not_callable", "'eval_fn' is int, not a function"),
                          ("userdata:exits", r"called sys.exit\(0\)")]:
        with pytest.raises(HaqError, match=message):
            load_task_data(spec, "userdata:model")


def test_a_data_callable_may_give_a_test_split_and_nothing_unknown(tmp_path, monkeypatch):
    (tmp_path / "splits.py").write_text(textwrap.dedent("""
        import torch

        def batches(label):
            return [(torch.zeros(4, 3, 8, 8), torch.full((4,), label))]

        def with_test_data():
            return {"calibration_data": [torch.zeros(2, 3, 8, 8)], "val_data": batches(0), "test_data": batches(1)}

        def with_test_eval_fn():
            def test_eval_fn(model):
                raise KeyError("test labels")
            return {"calibration_data": [torch.zeros(2, 3, 8, 8)], "eval_fn": lambda m: 50.0,
                    "test_eval_fn": test_eval_fn}

        def misspelt():
            return {"calibration_data": [torch.zeros(2, 3, 8, 8)], "eval_fn": lambda m: 50.0, "test_dat": []}

        def bad_test_data():
            return {"calibration_data": [torch.zeros(2, 3, 8, 8)], "eval_fn": lambda m: 50.0,
                    "test_data": [torch.zeros(4, 3, 8, 8)]}

        def test_eval_fn_not_callable():
            return {"calibration_data": [torch.zeros(2, 3, 8, 8)], "eval_fn": lambda m: 50.0, "test_eval_fn": 7}
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    always_zero = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    nn.init.zeros_(always_zero[1].weight)
    with torch.no_grad():
        always_zero[1].bias.copy_(torch.tensor([1.0, 0.0]))
    data = load_task_data("splits:with_test_data", "splits:model")
    assert data.eval_fn(always_zero) == 100.0 and data.test_eval_fn(always_zero) == 0.0  # each split its own
    given = load_task_data("splits:with_test_eval_fn", "splits:model").test_eval_fn
    with pytest.raises(HaqError, match=r"^test_eval_fn raised KeyError: 'test labels'\.$"):
        given(always_zero)  # the user's function is named, not the backend that ran it
    for spec, message in [
            ("splits:misspelt", r"unknown key\(s\) 'test_dat'; the allowed keys are calibration_data, eval_fn, "
                                "val_data, train_data, test_eval_fn, test_data"),
            ("splits:bad_test_data", r"test_data batch 0 is Tensor; each batch must be an \(inputs, labels\) pair"),
            ("splits:test_eval_fn_not_callable", "'test_eval_fn' is int, not a function")]:
        with pytest.raises(HaqError, match=message):
            load_task_data(spec, "splits:model")


def test_a_truncated_demo_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(tmp_path))
    settings = TrainSettings(epochs=1)
    first = load_demo(settings)
    path = tmp_path / "demo" / first.info["cache_file"].rsplit("/", 1)[-1]
    assert first.trained_now and path.is_file()
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="unreadable.*retraining"):
        rebuilt = load_demo(settings)
    assert rebuilt.trained_now
    assert rebuilt.float_val_accuracy == first.float_val_accuracy  # seeded training gives the same model
    assert path.stat().st_size == len(good)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    again = load_demo(settings)
    assert not again.trained_now and again.float_val_accuracy == first.float_val_accuracy


@pytest.mark.parametrize("answer, problem", [
    ("91.0", "returned '91.0' (str)"), (None, "returned None (NoneType)"), (True, "returned True (bool)"),
    (math.nan, "returned NaN"), (math.inf, "returned inf, outside 0..100"), (930.0, "returned 930, outside 0..100"),
    (-0.5, "returned -0.5, outside 0..100"), (torch.tensor([1.0, 2.0]), "returned Tensor tensor([1., 2.]), not a number"),
])
def test_the_search_and_the_up_front_check_refuse_the_same_answers_in_the_same_words(model, answer, problem):
    from haq_plugin.engine.eval_fn import EvaluationError, checked_eval_fn

    with pytest.raises(EvaluationError) as in_search:
        checked_eval_fn(lambda m: answer)(model)
    assert str(in_search.value) == f"eval_fn {problem}"
    with pytest.raises(HaqError) as up_front:
        check_accuracy(answer, "eval_fn")
    assert str(up_front.value).startswith(f"eval_fn {problem}. eval_fn(model) must return")


def test_scalar_tensors_are_accuracies_in_the_search_too(model):
    from haq_plugin.engine.eval_fn import checked_eval_fn

    assert checked_eval_fn(lambda m: torch.tensor(87.5))(model) == 87.5
    assert checked_eval_fn(lambda m: 0.5)(model) == 0.5  # a small accuracy, not refused as a fraction
