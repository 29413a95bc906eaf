"""A user's own model and data, written as the README's 'Bring your own model' section shows.

The README loads trained weights from a file; here the small network is trained for a
few steps on the spot so that the test has no file to ship.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn


def _digits():
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(digits.target)


def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    x, y = _digits()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for i in range(60):
        idx = slice((i * 64) % 1000, (i * 64) % 1000 + 64)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    return net.eval(), torch.zeros(1, 1, 8, 8)


def data():
    x, y = _digits()
    return {"calibration_data": [x[:256]], "val_data": [(x[1400:], y[1400:])], "train_data": [(x[:1000], y[:1000])],
            "test_data": [(x[1000:1400], y[1000:1400])]}
