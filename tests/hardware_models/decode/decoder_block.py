"""One SmolLM2-135M decoder block's linears (hidden 576, intermediate 1536, 3 KV heads of 64), for ``--model``."""

import torch
from torch import nn

HIDDEN, INTERMEDIATE, KV = 576, 1536, 192


class DecoderLinears(nn.Module):
    """The seven projections of a Llama block in execution order; attention itself is left out."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.k_proj = nn.Linear(HIDDEN, KV, bias=False)
        self.v_proj = nn.Linear(HIDDEN, KV, bias=False)
        self.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.gate_proj = nn.Linear(HIDDEN, INTERMEDIATE, bias=False)
        self.up_proj = nn.Linear(HIDDEN, INTERMEDIATE, bias=False)
        self.down_proj = nn.Linear(INTERMEDIATE, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        h = x + self.o_proj(q) + (k.sum() + v.sum()) * 0
        return h + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


def block():
    """The module and one decode step's input: one token of one sequence."""
    return DecoderLinears().eval(), torch.zeros(1, HIDDEN)
