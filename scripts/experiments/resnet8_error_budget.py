#!/usr/bin/python3
"""Where ResNet8's int8 error comes from: the README's error-budget figures.

Simulates quantd's int8 ResNet8 in FP32 (BatchNorm folded; fake-quantized weights per output channel,
symmetric, as PyTorch's per-channel observer; activations fake-quantized with the qparams a quantd
manifest lists) and prints top-1 and agreement with FP32 on the 10000 test images for: int8 weights
only (rounded to nearest, with bias correction, with fitted rounding), int8 activations only (with the
pooled features on layer3's grid, as LibTorch's int8 pooling keeps them, or folded into fc, which
rounds them not at all), and both.

Bias correction uses FP32 input means over calib_batch.bin. Fitted rounding is GPTQ-style: each
layer's input-patch second moments over the first 256 calibration images, 1% damping, columns in
order; fc keeps rounding to nearest, as quantd does for the folded classifier (4096 columns).

  /usr/bin/python3 scripts/experiments/resnet8_error_budget.py FIXTURES_DIR MANIFEST.json
  (MANIFEST.json: quantd-quantize --report of a job on the same model, e.g. --preset best)
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
BLOCKS = (('layer1', 1), ('layer2', 2), ('layer3', 2))


def read_cifar(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32)), raw[:, 0].astype(np.int64)


def folded_layers(model_path):
    sd = {k: v.detach().clone() for k, v in torch.jit.load(model_path).state_dict().items()}

    def fold(conv, bn):
        w, b = sd[conv + '.weight'], sd[conv + '.bias']
        if bn is None:
            return w, b
        s = sd[bn + '.weight'] / torch.sqrt(sd[bn + '.running_var'] + 1e-3)
        return w * s[:, None, None, None], (b - sd[bn + '.running_mean']) * s + sd[bn + '.bias']

    layers = {'conv1': fold('conv1', 'bn1'), 'fc': (sd['fc.weight'], sd['fc.bias'])}
    for name, stride in BLOCKS:
        layers[name + '.conv1'] = fold(name + '.conv1', name + '.bn1')
        layers[name + '.conv2'] = fold(name + '.conv2', name + '.bn2')
        if stride == 2:
            layers[name + '.shortcut'] = fold(name + '.shortcut', None)
    return layers


def per_channel_int8(w):
    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp(min=1e-12) / 127.5
    return torch.clamp(torch.round(w / scale), -128, 127) * scale


def forward(x, weights, act, means=None, inputs=None):
    """act(name, tensor) quantizes a value; `means`, when given, collects each layer's mean input,
    `inputs` each layer's input."""
    def layer(name, x, stride=1, pad=1, relu=False):
        if means is not None:
            means[name] = means.get(name, 0) + x.sum(0)
        if inputs is not None:
            inputs[name] = x
        w, b = weights[name]
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        return act(name, F.relu(y) if relu else y)

    x = layer('conv1', act('input', x), relu=True)
    for name, stride in BLOCKS:
        if stride == 2:
            y = layer(name + '.conv1', F.pad(x, (0, 1, 0, 1)), stride=2, pad=0, relu=True)
            s = layer(name + '.shortcut', x, stride=2, pad=0)
        else:
            y, s = layer(name + '.conv1', x, relu=True), x
        x = act(name + '.add', F.relu(s + layer(name + '.conv2', y)))
    x = act('pool', F.avg_pool2d(x, 8).flatten(1))
    if means is not None:
        means['fc'] = means.get('fc', 0) + x.sum(0)
    w, b = weights['fc']
    return act('fc', F.linear(x, w, b))


def run(images, weights, act):
    with torch.no_grad():
        return torch.cat([forward(images[i:i + 500], weights, act) for i in range(0, len(images), 500)])


GEOMETRY = {'conv1': (1, 1), 'layer1.conv1': (1, 1), 'layer1.conv2': (1, 1), 'layer2.conv1': (2, 0),
            'layer2.conv2': (1, 1), 'layer2.shortcut': (2, 0), 'layer3.conv1': (2, 0), 'layer3.conv2': (1, 1),
            'layer3.shortcut': (2, 0)}


def fitted_int8(w, second_moment, target=None):
    """Per-channel int8 with the round-to-nearest scales, integers chosen column by column so that
    the output error on inputs with this second moment cancels (GPTQ's update). `target` (w's shape),
    when given, is what is rounded instead of w, on w's scales."""
    scale = w.reshape(w.shape[0], -1).double().abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.5
    rows = (w if target is None else target).reshape(w.shape[0], -1).double().clone()
    h = second_moment.clone()
    h += torch.eye(h.shape[0], dtype=h.dtype) * 0.01 * torch.diag(h).mean()
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.zeros_like(rows)
    for i in range(rows.shape[1]):
        out[:, i:i + 1] = torch.clamp(torch.round(rows[:, i:i + 1] / scale), -128, 127) * scale
        error = (rows[:, i:i + 1] - out[:, i:i + 1]) / upper[i, i]
        rows[:, i + 1:] -= error @ upper[i:i + 1, i + 1:]
    return out.reshape(w.shape).float()


def second_moments(images, layers):
    sums, counts = {}, {}
    with torch.no_grad():
        for i in range(0, len(images), 32):
            inputs = {}
            forward(images[i:i + 32], layers, lambda name, t: t, inputs=inputs)
            for name, (stride, pad) in GEOMETRY.items():
                w = layers[name][0]
                patches = F.unfold(inputs[name], w.shape[2:], padding=pad, stride=stride)
                patches = patches.transpose(1, 2).reshape(-1, w[0].numel()).double()
                sums[name] = sums.get(name, 0) + patches.T @ patches
                counts[name] = counts.get(name, 0) + patches.shape[0]
    return {name: sums[name] / counts[name] for name in sums}


def bias_corrected(layers, int8_weights, calib):
    means = {}
    with torch.no_grad():
        for i in range(0, len(calib), 250):
            forward(calib[i:i + 250], layers, lambda name, t: t, means)
    corrected = {}
    for k, (w, b) in layers.items():
        wq, mean = int8_weights[k][0], means[k] / len(calib)
        if k == 'fc':
            shift = F.linear(mean[None], w - wq)[0]
        else:
            stride, pad = GEOMETRY[k]
            shift = F.conv2d(mean[None], w - wq, None, stride=stride, padding=pad).mean((0, 2, 3))
        corrected[k] = (wq, b + shift)
    return corrected


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    fixtures, manifest = sys.argv[1:]
    layers = folded_layers(os.path.join(fixtures, 'models', 'resnet8_fp32.torchscript.pt'))
    qparams = {}
    for entry in json.load(open(manifest))['layers']:
        name = 'input' if entry['name'].startswith('quantize:') else entry['name'].replace(':', '.')
        qparams[name] = (entry['output_scale'], entry['output_zero_point'])

    def activations(fold_pooling):
        def fake_quant(name, t):
            if name == 'pool':
                if fold_pooling:
                    return t
                name = 'layer3.add'  # int8 pooling keeps its input's qparams
            scale, zero_point = qparams[name]
            return torch.fake_quantize_per_tensor_affine(t, float(scale), int(zero_point), 0, 255)
        return fake_quant

    def identity(name, t):
        return t

    test, labels = read_cifar(os.path.join(fixtures, 'cifar10', 'test_batch.bin'))
    calib, _ = read_cifar(os.path.join(fixtures, 'cifar10', 'calib_batch.bin'))
    fp32 = run(test, layers, identity).argmax(1)
    nearest = {k: (per_channel_int8(w), b) for k, (w, b) in layers.items()}
    moments = second_moments(calib[:256], layers)
    fitted = {k: (fitted_int8(w, moments[k]) if k in moments else per_channel_int8(w), b)
              for k, (w, b) in layers.items()}

    print(f'FP32: {(fp32.numpy() == labels).sum()} / {len(labels)}')
    for title, weights, act in (('int8 weights only', nearest, identity),
                                ('weights + bias correction', bias_corrected(layers, nearest, calib), identity),
                                ('weights, fitted rounding', fitted, identity),
                                ('activations only', layers, activations(False)),
                                ('activations, pooling folded', layers, activations(True)),
                                ('weights and activations', nearest, activations(False)),
                                ('both + bias correction', bias_corrected(layers, nearest, calib),
                                 activations(False)),
                                ('both + bc, pooling folded', bias_corrected(layers, nearest, calib),
                                 activations(True)),
                                ('both + fitted + bc + folded', bias_corrected(layers, fitted, calib),
                                 activations(True))):
        predicted = run(test, weights, act).argmax(1)
        print(f'{title:30} top-1 {(predicted.numpy() == labels).sum():5}  '
              f'agreement {100 * (predicted == fp32).double().mean().item():.2f}%', flush=True)


if __name__ == '__main__':
    main()
