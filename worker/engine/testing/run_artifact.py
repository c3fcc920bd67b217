#!/usr/bin/python3
"""Runs an int8 artifact as a Python user would: torch.jit.load under the manifest's kernel engine,
then the model on every image of an .npy file (NCHW float32), in one batch.

Usage: /usr/bin/python3 run_artifact.py ARTIFACT.pt ENGINE IMAGES.npy OUT.f32   (OUT: the outputs, raw little-endian
float32 in row-major order)
"""
import sys

import numpy as np
import torch


def main():
    artifact, engine, images, out = sys.argv[1:5]
    torch.set_num_threads(1)
    torch.backends.quantized.engine = engine  # before loading: packs are re-made for the current engine
    model = torch.jit.load(artifact)
    with torch.no_grad():
        y = model(torch.from_numpy(np.load(images)))
    y.numpy().astype('<f4').tofile(out)


if __name__ == '__main__':
    main()
