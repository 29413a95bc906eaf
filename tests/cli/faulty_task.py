"""``--data`` callables whose eval_fn is broken in the ways users break it (with user_task's model)."""

import os

from user_task import data as good_data


def _with_eval(eval_fn):
    task = good_data()
    task.pop("val_data")
    return {**task, "eval_fn": eval_fn}


def raising():
    def eval_fn(model):
        raise KeyError("labels")
    return _with_eval(eval_fn)


def string():
    return _with_eval(lambda model: "ninety")


def fraction_nan():
    return _with_eval(lambda model: float("nan"))


def later_failure():
    """Fails from the HAQ_FAIL_AFTER-th call on (the float model and the baseline are the first two)."""
    calls = []
    good = good_data()
    x, y = good["val_data"][0]

    def eval_fn(model):
        calls.append(1)
        if len(calls) >= int(os.environ["HAQ_FAIL_AFTER"]):
            raise RuntimeError("validation set unavailable")
        return float((model(x).argmax(1) == y).float().mean() * 100)
    return _with_eval(eval_fn)
