#!/usr/bin/python3
"""A MobileNetV2-style CIFAR-10 model for the best preset's SQNR test (issue #12), and PyTorch's
eager-mode int8 baselines on it.

  build OUT_DIR FIXTURES_DIR   writes OUT_DIR/mobilenet_v2.pt (torch.jit.script, FP32, raw 0..255
                               pixels in) and OUT_DIR/eager.json: the output SQNR against FP32 of
                               PyTorch 1.13's eager int8 model for each preset this torch has
                               (Conv+BN(+ReLU) fused, QuantStub/DeQuantStub, FloatFunctional adds),
                               calibrated like quantd is: the first CALIB images of calib_batch.bin
                               in batches of 100; scored on the first SCORED test images.
  score MODEL.pt ARTIFACT.pt ENGINE FIXTURES_DIR   prints a quantd artifact's output SQNR on the
                               same images, run by torch.jit.load on kernel engine ENGINE.

The network: a 3x3 stem, inverted residual blocks (1x1 expand + ReLU6, depthwise 3x3 + ReLU6,
linear 1x1 project, residual add where shapes allow), a 1x1 head + ReLU6, average pool and a
classifier. Weights are random (seeded); BatchNorm statistics are warmed on 2000 training images
(val_batch.bin), so folding them gives the uneven per-channel weight ranges of a trained MobileNet.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

CALIB = 200
SCORED = 500
torch.set_num_threads(1)


def read_cifar(path, n):
    raw = np.fromfile(path, dtype=np.uint8, count=n * 3073).reshape(-1, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, quantizable):
        super().__init__()
        hidden = cin * expand
        self.use_add = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(hidden)
        self.expand_act = nn.ReLU6()
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = nn.ReLU6()
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.skip_add = torch.nn.quantized.FloatFunctional() if quantizable and self.use_add else None

    def forward(self, x):
        y = self.expand_act(self.expand_bn(self.expand(x)))
        y = self.dw_act(self.dw_bn(self.dw(y)))
        y = self.project_bn(self.project(y))
        if not self.use_add:
            return y
        if self.skip_add is not None:
            return self.skip_add.add(x, y)
        return x + y


class MobileNetV2(nn.Module):
    # (expansion, out channels, blocks, first stride), a narrow CIFAR variant
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2)]

    def __init__(self, quantizable=False):
        super().__init__()
        self.quant = torch.quantization.QuantStub() if quantizable else nn.Identity()
        self.dequant = torch.quantization.DeQuantStub() if quantizable else nn.Identity()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.stem_act = nn.ReLU6()
        blocks, cin = [], 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t, quantizable))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, 128, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(128)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.quant(x)
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = self.head_act(self.head_bn(self.head(x)))
        x = self.fc(torch.flatten(self.pool(x), 1))
        return self.dequant(x)


def build_fp32(fixtures):
    torch.manual_seed(12)
    model = MobileNetV2()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative averages: the statistics of all warming images
            m.reset_running_stats()
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    warm = read_cifar(os.path.join(fixtures, 'cifar10', 'val_batch.bin'), 2000)
    model.train()
    with torch.no_grad():
        for i in range(0, len(warm), 100):
            model(warm[i:i + 100])
    return model.eval()


def sqnr_db(ref, out):
    return float(10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum()))


def fuse_groups(model):
    groups = [['stem', 'stem_bn'], ['head', 'head_bn']]
    for i, _ in enumerate(model.blocks):
        p = f'blocks.{i}.'
        groups += [[p + 'expand', p + 'expand_bn'], [p + 'dw', p + 'dw_bn'], [p + 'project', p + 'project_bn']]
    return groups


def eager_sqnr(fp32, preset, calib, scored, ref):
    from torch.ao.quantization import get_default_qconfig, prepare, convert, fuse_modules
    torch.backends.quantized.engine = preset
    model = MobileNetV2(quantizable=True)
    model.load_state_dict(fp32.state_dict())
    model.eval()
    model = fuse_modules(model, fuse_groups(model))  # ReLU6 is not fusable in eager mode
    model.qconfig = get_default_qconfig(preset)
    prepare(model, inplace=True)
    with torch.no_grad():
        for i in range(0, len(calib), 100):
            model(calib[i:i + 100])
    convert(model, inplace=True)
    with torch.no_grad():
        return sqnr_db(ref, model(scored))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == 'build':
        out_dir, fixtures = sys.argv[2], sys.argv[3]
        fp32 = build_fp32(fixtures)
        torch.jit.script(fp32).save(os.path.join(out_dir, 'mobilenet_v2.pt'))
        calib = read_cifar(os.path.join(fixtures, 'cifar10', 'calib_batch.bin'), CALIB)
        scored = read_cifar(os.path.join(fixtures, 'cifar10', 'test_batch.bin'), SCORED)
        with torch.no_grad():
            ref = fp32(scored)
        result = {'calibration_images': CALIB, 'scored_images': SCORED, 'eager_sqnr_db': {}}
        for preset in ('onednn', 'qnnpack', 'fbgemm', 'x86'):
            if preset in torch.backends.quantized.supported_engines:
                result['eager_sqnr_db'][preset] = eager_sqnr(fp32, preset, calib, scored, ref)
        with open(os.path.join(out_dir, 'eager.json'), 'w') as f:
            json.dump(result, f)
        print(json.dumps(result))
    elif len(sys.argv) == 6 and sys.argv[1] == 'score':
        model_path, artifact_path, engine, fixtures = sys.argv[2:]
        torch.backends.quantized.engine = engine  # before loading: packs are made on load
        scored = read_cifar(os.path.join(fixtures, 'cifar10', 'test_batch.bin'), SCORED)
        with torch.no_grad():
            ref = torch.jit.load(model_path)(scored)
            out = torch.jit.load(artifact_path)(scored)
        print(json.dumps({'sqnr_db': sqnr_db(ref, out)}))
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main()
