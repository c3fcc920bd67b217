"""Small scripted models that use PyTorch's own torch.nn code, for
scripted_pytorch_code_test.cc: quantd's import must say clearly why it cannot
follow some of that code, and must take arguments that have defaults.

    /usr/bin/python3 tests/engine/scripted_models.py OUT_DIR
"""
import sys
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Upsampled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.up = nn.Upsample(scale_factor=2.0)

    def forward(self, x):
        return self.up(torch.relu(self.conv(x))).mean([2, 3])


class Interpolated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2.0).mean([2, 3])


class DefaultArguments(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, k: int = 2, relu: bool = True, bias: Optional[torch.Tensor] = None):
        y = self.conv(x) * float(k)
        if relu:
            y = torch.relu(y)
        if bias is not None:
            y = y + bias
        return y.mean([2, 3])


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    for name, model in [("upsampled", Upsampled()), ("interpolated", Interpolated()),
                        ("default_arguments", DefaultArguments())]:
        torch.jit.script(model.eval()).save(f"{out}/{name}.pt")


if __name__ == "__main__":
    main()
