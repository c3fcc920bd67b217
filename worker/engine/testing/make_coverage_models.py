#!/usr/bin/python3
"""Builds small models for the engine's int8 op coverage tests (deterministic), each saved twice:
torch.jit.script as NAME.pt and torch.jit.trace as NAME_traced.pt.

  inverted_residual  MobileNetV2 block: 1x1 expand + BN + ReLU6 (in place), depthwise 3x3 + BN + ReLU6,
                     1x1 project + BN, residual add, hardswish, clamp, adaptive avg-pool, Linear
  fire               SqueezeNet fire module: squeeze 1x1 + ReLU, expand 1x1 / 3x3 + ReLU, cat, 1x1 conv,
                     sigmoid, adaptive avg-pool
  gelu_layernorm     conv, GELU, LayerNorm (no int8 kernels: FP32 between int8 convs), conv
  broken             a model int8 cannot represent: one conv channel carries a huge constant, so the
                     per-tensor activation scale erases the small channels the classifier reads
  images.npy         96 float32 images, NCHW 3x16x16, values 0..1; labels.npy: 96 int64 labels 0..3

Usage: /usr/bin/python3 make_coverage_models.py OUT_DIR
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, groups=1):
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout)


class InvertedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = conv_bn(3, 8, 3)
        self.stem_act = nn.ReLU6(inplace=True)
        self.expand, self.expand_bn = conv_bn(8, 32, 1)
        self.expand_act = nn.ReLU6(inplace=True)
        self.dw, self.dw_bn = conv_bn(32, 32, 3, groups=32)
        self.dw_act = nn.ReLU6(inplace=True)
        self.project, self.project_bn = conv_bn(32, 8, 1)
        self.hs = nn.Hardswish()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem_act(self.stem_bn(self.stem(x)))
        y = self.expand_act(self.expand_bn(self.expand(x)))
        y = self.dw_act(self.dw_bn(self.dw(y)))
        y = self.project_bn(self.project(y))
        x = torch.clamp(self.hs(x + y), -1.0, 4.0)
        return self.fc(torch.flatten(self.pool(x), 1))


class Fire(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_act = nn.ReLU(inplace=True)
        self.squeeze = nn.Conv2d(16, 4, 1)
        self.squeeze_act = nn.ReLU(inplace=True)
        self.e1 = nn.Conv2d(4, 8, 1)
        self.e1_act = nn.ReLU(inplace=True)
        self.e3 = nn.Conv2d(4, 8, 3, padding=1)
        self.e3_act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(16, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.stem_act(self.stem(x))
        s = self.squeeze_act(self.squeeze(x))
        x = torch.cat([self.e1_act(self.e1(s)), self.e3_act(self.e3(s))], 1)
        return torch.flatten(self.pool(torch.sigmoid(self.head(x))), 1)


class GeluLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm([8, 16, 16])
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.c2(self.ln(self.act(self.c1(x)))), 1), 1)


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 16 * 16, 4)
        with torch.no_grad():
            self.conv.bias.copy_(torch.tensor([1e4, 0.0, 0.0, 0.0]))
            self.conv.weight[0].zero_()
            self.fc.weight[:, :16 * 16].zero_()  # the classifier ignores the huge channel

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x - 0.5), 1))


def randomize_bn(m):
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    example = torch.rand(2, 3, 16, 16)
    for name, cls in [('inverted_residual', InvertedResidual), ('fire', Fire), ('gelu_layernorm', GeluLayerNorm),
                      ('broken', Broken)]:
        torch.manual_seed(0)
        m = cls()
        randomize_bn(m)
        m.eval()
        torch.jit.script(m).save(os.path.join(out, name + '.pt'))
        torch.jit.trace(m, example).save(os.path.join(out, name + '_traced.pt'))
    rng = np.random.default_rng(0)
    np.save(os.path.join(out, 'images.npy'), rng.random((96, 3, 16, 16), dtype=np.float32))
    np.save(os.path.join(out, 'labels.npy'), rng.integers(0, 4, size=(96,), dtype=np.int64))


if __name__ == '__main__':
    main()
