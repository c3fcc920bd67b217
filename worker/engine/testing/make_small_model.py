#!/usr/bin/python3
"""Builds the engine tests' small synthetic model and data (deterministic):

  small_model.pt   TorchScript (torch.jit.script) with a Conv+BN+ReLU stem, a depthwise conv whose output
                   feeds two branches, a residual add, a max-pool, an op with no int8 kernel (erf), a
                   Linear+ReLU and a final Linear.
  images.npy       64 uint8 images, NHWC 16x16x3     labels.npy  int64 labels 0..3
  fp32_predictions.npy  the FP32 model's argmax for each image (int64)

Usage: /usr/bin/python3 make_small_model.py OUT_DIR
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.dw_relu = nn.ReLU()
        self.branch = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 16)
        self.fc_relu = nn.ReLU()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x / 255.0)))
        y = self.dw(x)
        z = self.dw_relu(y) + self.branch(y)  # y has two consumers
        z = self.pool(z)
        z = torch.erf(z) + z                  # erf has no int8 kernel
        z = torch.flatten(z, 1)
        z = self.fc_relu(self.fc(z))
        return self.head(z)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    m = Small()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.1, 0.1)
    m.eval()
    torch.jit.script(m).save(os.path.join(out, 'small_model.pt'))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8)
    np.save(os.path.join(out, 'images.npy'), images)
    np.save(os.path.join(out, 'labels.npy'), rng.integers(0, 4, size=(64,), dtype=np.int64))
    # What the FP32 model predicts (NCHW float pixels, as the engine reads
    # them): int8's accuracy against these labels is its agreement with FP32.
    with torch.no_grad():
        fp32 = m(torch.from_numpy(images).permute(0, 3, 1, 2).float()).argmax(1)
    np.save(os.path.join(out, 'fp32_predictions.npy'), fp32.numpy().astype(np.int64))


if __name__ == '__main__':
    main()
