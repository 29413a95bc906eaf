"""The embedded demo task: a compact MobileNet-V2 on the UCI handwritten digits.

A first command must do a real search with nothing to download, so the demo
uses the 1,797 8x8 digit images that scikit-learn ships, and a small
MobileNet-V2-style network (inverted residual blocks with depthwise
convolutions, so that layers differ in sensitivity and in hardware cost).

Split (fixed, seeded): the images are shuffled with ``numpy.random.default_rng(0)``
and cut into 60% train (1,078), 20% validation (359) and 20% test (360).
Pixels are scaled from 0..16 to 0..1.  The search rewards validation accuracy;
the test split is only reported.

The float model's weights ship with the package (``tasks/data/``), named by a
key that hashes the network definition, the training code and the settings.
Training is deterministic on one machine but not across CPUs (their kernels sum
in other orders: two machines trained models of 97.49% and 98.33% validation
accuracy from the same seed), and the demo's figures and golden outputs should
be the same everywhere.  A change to the network or the training changes the key:
then the model trains on first use (seconds) and is cached under
``cache_dir("demo")``.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from haq_plugin.storage.cache import cache_dir, stable_hash
from haq_plugin.engine.device import BatchesOnDevice, model_device
from haq_plugin.storage.files import write_via_temp
from haq_plugin.tasks.zoo import MobileNetV2

Batch = tuple[torch.Tensor, torch.Tensor]

# (expansion t, out channels, repeats, first stride) on 8x8 inputs: 8x8 -> 4x4 -> 2x2 -> 2x2
DEMO_BLOCKS = [(1, 16, 1, 2), (6, 64, 1, 2), (6, 128, 2, 1)]
INPUT_SHAPE = (1, 1, 8, 8)
#: Trained demo weights that ship with the package, one file per cache key.
SHIPPED_WEIGHTS = Path(__file__).parent / "data"


@dataclass(frozen=True)
class TrainSettings:
    """How the demo's float model is trained (part of its cache key)."""

    seed: int = 1
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4


@dataclass
class DemoTask:
    """Everything a search needs: a trained float model, data and evaluation functions."""

    model: nn.Module
    example_input: torch.Tensor
    calibration_data: list[torch.Tensor]
    train_data: list[Batch]
    eval_fn: Callable[[nn.Module], float]
    test_eval_fn: Callable[[nn.Module], float]
    float_val_accuracy: float
    float_test_accuracy: float
    trained_now: bool = False
    train_seconds: float = 0.0
    #: where the weights came from: "shipped" with the package, the user's "cache", or "trained" now
    origin: str = "trained"
    info: dict = field(default_factory=dict)


def build_demo_model() -> nn.Module:
    """The demo network: 14 quantizable layers (stem, 4 inverted residual blocks, head, classifier).

    Channels widen quickly (16 -> 64 -> 128, expansion 6) so that most layers have a deep reduction:
    on BitFusion-style hardware, layers with a shallow reduction are bound by 32-bit partial-sum
    traffic and barely speed up at low bits, which would leave a latency search nothing to trade.
    """
    return MobileNetV2(num_classes=10, in_channels=1, config=DEMO_BLOCKS, stem_stride=1,
                       stem_channels=16, last_channels=256, dropout=0.0, relu6=False)


def digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed train/val/test split of the scikit-learn digits (see module docstring)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    return {"train": (x[:n_train], y[:n_train]),
            "val": (x[n_train:n_train + n_val], y[n_train:n_train + n_val]),
            "test": (x[n_train + n_val:], y[n_train + n_val:])}


def accuracy_fn(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], float]:
    """An ``eval_fn``: top-1 accuracy (percent) of a model on fixed data, on whatever device the model is."""
    placed = BatchesOnDevice([(x, y)])

    def evaluate(model: nn.Module) -> float:
        ((x_on, y_on),) = placed.on(model_device(model))
        with torch.no_grad():
            return float((model(x_on).argmax(1) == y_on).float().mean() * 100.0)
    return evaluate


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[Batch]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def train_float(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings) -> None:
    """Plain Adam training with a cosine schedule; deterministic for a given seed.

    Runs on one thread: reductions sum in another order with another thread count,
    which would make the trained model depend on the environment (and more
    threads are no faster for a network this small).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(model, x, y, settings)
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings) -> None:
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = (len(y) + settings.batch_size - 1) // settings.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def demo_cache_key(settings: TrainSettings) -> str:
    """Hash of the network definition, the training code and settings."""
    source = "".join(inspect.getsource(obj) for obj in (build_demo_model, train_float, _train, digits_splits,
                                                        MobileNetV2))
    return stable_hash({"source": source, "blocks": DEMO_BLOCKS, "settings": asdict(settings), "init": "seeded"})


def load_demo(settings: TrainSettings = TrainSettings(), use_cache: bool = True) -> DemoTask:
    """The demo task, training (and caching) the float model on first use."""
    splits = digits_splits()
    with torch.random.fork_rng():  # seeded initial weights, without touching the caller's generator
        torch.manual_seed(settings.seed)
        model = build_demo_model()
    name = f"mobilenetv2-digits-{demo_cache_key(settings)}.pt"
    path, origin, seconds = SHIPPED_WEIGHTS / name, "shipped", 0.0
    if not (use_cache and path.is_file() and _load_cached(model, path)):
        path, origin = cache_dir("demo") / name, "cache"
        if not (use_cache and _load_cached(model, path)):
            start = time.perf_counter()
            train_float(model, *splits["train"], settings)
            seconds, origin = time.perf_counter() - start, "trained"
            if use_cache:
                _save_cached(model, path)
    model.eval()
    x_train, y_train = splits["train"]
    eval_fn, test_eval_fn = accuracy_fn(*splits["val"]), accuracy_fn(*splits["test"])
    return DemoTask(
        model=model,
        example_input=torch.zeros(INPUT_SHAPE),
        calibration_data=[x_train[:256]],
        train_data=batches(x_train, y_train, 64),
        eval_fn=eval_fn,
        test_eval_fn=test_eval_fn,
        float_val_accuracy=eval_fn(model),
        float_test_accuracy=test_eval_fn(model),
        trained_now=origin == "trained",
        train_seconds=seconds,
        origin=origin,
        info={"dataset": "UCI handwritten digits (scikit-learn), 8x8 grayscale, 10 classes",
              "split": {k: len(v[1]) for k, v in splits.items()}, "cache_file": str(path)},
    )


def _load_cached(model: nn.Module, path: Path) -> bool:
    """Load the cached weights into ``model``; False (a cache miss) when the file is absent or damaged.

    A truncated or overwritten cache file (a full disk, a killed process, a
    stray edit) must not stop the demo: it is retrained and the file rewritten.
    """
    if not path.is_file():
        return False
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
    except Exception as exc:
        warnings.warn(f"demo model cache {path} is unreadable ({type(exc).__name__}); retraining it.",
                      stacklevel=3)
        return False
    return True


def _save_cached(model: nn.Module, path: Path) -> None:
    """Write the weights through a temporary file and a rename, so a reader never sees half a file."""
    try:
        write_via_temp(path, lambda tmp: torch.save(model.state_dict(), tmp))
    except OSError as exc:  # an unwritable cache costs a retraining next time, nothing more
        warnings.warn(f"could not write the demo model cache {path} ({exc}); it will be retrained next time.",
                      stacklevel=3)
