"""The peer workload: a MobileNet-V2-style CNN for the scikit-learn digits.

Defined here, not in the package, because it is only a benchmark: the network
on which an earlier comparison with another DDPG mixed-precision search (NNCF's
AutoQ) was made, so that search quality at tight budgets can be compared with
published figures.

* Stem: conv 1->16 3x3, BN, ReLU6.
* Inverted residual blocks (1x1 expand, BN, ReLU6; 3x3 depthwise, BN, ReLU6;
  1x1 project, BN): 16->24 expand 4 stride 2; 24->24 expand 4 stride 1 with the
  residual add; 24->32 expand 4 stride 2.
* Head: 1x1 32->64, BN, ReLU6; global average pool; Linear 64->10.
* Data: the 1,797 digits shuffled with ``numpy.random.default_rng(0)`` and cut
  into 1200 train / 300 val / 297 test; pixels scaled to [0, 1].
* Training: Adam 3e-3, cosine schedule, 40 epochs, batch 64, one thread, seed 0.

The trained float model is cached under ``cache_dir("peer")`` (``HAQ_PLUGIN_CACHE``),
keyed by a hash of this module's source.
"""

from __future__ import annotations

import inspect
import sys

import numpy as np
import torch
from torch import nn

from haq_plugin.storage.cache import cache_dir, stable_hash
from haq_plugin.tasks.demo import Batch, DemoTask, accuracy_fn, batches

SPLIT = (1200, 300, 297)
EPOCHS, BATCH, LR, SEED = 40, 64, 3e-3, 0


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 project; a residual add where shapes allow."""

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(conv_bn(c_in, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  conv_bn(hidden, c_out, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class PeerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16, 3), InvertedResidual(16, 24, 4, 2), InvertedResidual(24, 24, 4, 1),
            InvertedResidual(24, 32, 4, 2), conv_bn(32, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# The peer workload is a task like the demo: the same record, with its own network and split.
PeerTask = DemoTask


def splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[order], y[order]
    a, b = SPLIT[0], SPLIT[0] + SPLIT[1]
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(SEED)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * ((len(y) + BATCH - 1) // BATCH))
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(y), generator=generator)
            for i in range(0, len(y), BATCH):
                idx = order[i:i + BATCH]
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def load_peer_task() -> PeerTask:
    """The trained float model (cached) with its data and evaluation functions."""
    data = splits()
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = PeerNet()
    key = stable_hash({"source": inspect.getsource(sys.modules[__name__])})
    path = cache_dir("peer") / f"peer-digits-{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, *data["train"])
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    model.eval()
    x_train, y_train = data["train"]
    eval_fn, test_eval_fn = accuracy_fn(*data["val"]), accuracy_fn(*data["test"])
    return PeerTask(model, torch.zeros(1, 1, 8, 8), [x_train[:256]], batches(x_train, y_train, 64), eval_fn,
                    test_eval_fn, eval_fn(model), test_eval_fn(model))


if __name__ == "__main__":
    task = load_peer_task()
    print(f"float val {task.float_val_accuracy:.2f}% test {task.float_test_accuracy:.2f}%")
