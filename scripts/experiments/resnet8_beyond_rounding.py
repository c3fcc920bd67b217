#!/usr/bin/python3
"""Two ways past the best preset's fitted rounding, simulated first (README, issue #12: "Tried, not kept").

Same simulation as resnet8_error_budget.py (int8 ResNet8 in FP32 with a quantd manifest's activation
qparams, pooling folded, per-channel weights), scored on the 10000 test images against FP32:

  inputs    Fitted rounding against each layer's *int8* inputs: layer by layer in order, the weights
            minimising E|W x - Q x~|^2, where x is the FP32 network's input to the layer and x~ the
            int8 network's (upstream weights already rounded, activations fake-quantized): the
            continuous optimum W E[x x~^T] E[x~ x~^T]^-1, then rounded GPTQ-style with E[x~ x~^T].
            With and without bias correction, and with each bias set for the int8 inputs' means.
  ranges    Each activation's scale searched by coordinate descent (x0.85, 0.92, 1.08, 1.18 of the
            manifest's; zero point kept) for the least mean squared logit error against FP32 on the
            1000 calibration images, two sweeps.

  /usr/bin/python3 scripts/experiments/resnet8_beyond_rounding.py FIXTURES_DIR MANIFEST.json inputs|ranges
  (MANIFEST.json: quantd-quantize --preset best --report; ~2 min for inputs, ~5 for ranges)
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet8_error_budget import (GEOMETRY, bias_corrected, fitted_int8, folded_layers, forward,  # noqa: E402
                                  per_channel_int8, read_cifar, run, second_moments)

ORDER = ['conv1', 'layer1.conv1', 'layer1.conv2', 'layer2.conv1', 'layer2.shortcut', 'layer2.conv2',
         'layer3.conv1', 'layer3.shortcut', 'layer3.conv2']


def patches(x, name, w):
    stride, pad = GEOMETRY[name]
    p = F.unfold(x, w.shape[2:], padding=pad, stride=stride)
    return p.transpose(1, 2).reshape(-1, w[0].numel()).double()


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in ('inputs', 'ranges'):
        sys.exit(__doc__)
    fixtures, manifest, mode = sys.argv[1:]
    layers = folded_layers(os.path.join(fixtures, 'models', 'resnet8_fp32.torchscript.pt'))
    qparams = {}
    for entry in json.load(open(manifest))['layers']:
        name = 'input' if entry['name'].startswith('quantize:') else entry['name'].replace(':', '.')
        qparams[name] = (float(entry['output_scale']), int(entry['output_zero_point']))

    def fake_quant(qp):
        def act(name, t):
            if name == 'pool':  # folded into fc: not rounded
                return t
            scale, zero_point = qp[name]
            return torch.fake_quantize_per_tensor_affine(t, scale, zero_point, 0, 255)
        return act

    def identity(name, t):
        return t

    test, labels = read_cifar(os.path.join(fixtures, 'cifar10', 'test_batch.bin'))
    calib, _ = read_cifar(os.path.join(fixtures, 'cifar10', 'calib_batch.bin'))
    with torch.no_grad():
        fp32_logits = run(test, layers, identity)
        fp32 = fp32_logits.argmax(1)

        def score(title, weights, qp=qparams):
            out = run(test, weights, fake_quant(qp))
            predicted = out.argmax(1)
            sqnr = 10 * torch.log10((fp32_logits ** 2).mean() / ((out - fp32_logits) ** 2).mean()).item()
            print(f'{title:44} top-1 {(predicted.numpy() == labels).sum():5}  '
                  f'agreement {100 * (predicted == fp32).double().mean().item():.2f}%  SQNR {sqnr:.2f} dB',
                  flush=True)

        moments = second_moments(calib[:256], layers)
        fitted = {k: (fitted_int8(w, moments[k]) if k in moments else per_channel_int8(w), b)
                  for k, (w, b) in layers.items()}
        best = bias_corrected(layers, fitted, calib)
        score('best preset (fitted + bc, pooling folded)', best)

        if mode == 'inputs':
            cal = calib[:256]
            fp_inputs = {}
            forward(cal, layers, identity, inputs=fp_inputs)
            for int8_means in (False, True):
                current = dict(layers)  # FP32 downstream of the layer being rounded
                for k in ORDER:
                    q_inputs = {}
                    forward(cal, current, fake_quant(qparams), inputs=q_inputs)
                    w, b = layers[k]
                    x, xq = patches(fp_inputs[k], k, w), patches(q_inputs[k], k, w)
                    h = xq.T @ xq / xq.shape[0]
                    cross = x.T @ xq / x.shape[0]
                    # Tiny damping: 1% (as for rounding) would shrink low-variance directions.
                    h_solve = h + torch.eye(h.shape[0], dtype=h.dtype) * 1e-6 * torch.diag(h).mean()
                    rows = w.reshape(w.shape[0], -1).double()
                    q = fitted_int8(w, h, target=(rows @ cross @ torch.linalg.inv(h_solve)).reshape(w.shape))
                    if int8_means:
                        b = b + (rows @ x.mean(0) - q.reshape(w.shape[0], -1).double() @ xq.mean(0)).float()
                    current[k] = (q, b)
                wq, b = per_channel_int8(layers['fc'][0]), layers['fc'][1]
                if int8_means:
                    fp_means, q_means = {}, {}
                    forward(cal, layers, identity, means=fp_means)
                    forward(cal, current, fake_quant(qparams), means=q_means)
                    w = layers['fc'][0]
                    b = b + F.linear(fp_means['fc'][None] / len(cal), w)[0] - F.linear(
                        q_means['fc'][None] / len(cal), wq)[0]
                current['fc'] = (wq, b)
                if int8_means:
                    score('int8-input rounding, biases for int8 means', current)
                else:
                    score('int8-input rounding', current)
                    score('int8-input rounding + bias correction', bias_corrected(layers, current, calib))
        else:
            reference = run(calib, layers, identity)
            qp = dict(qparams)

            def error(candidate):
                return ((run(calib, best, fake_quant(candidate)) - reference) ** 2).mean().item()

            current = error(qp)
            for sweep in range(2):
                for name in [k for k in qp if k != 'input']:
                    scale, zero_point = qp[name]
                    kept = (current, scale)
                    for factor in (0.85, 0.92, 1.08, 1.18):
                        qp[name] = (scale * factor, zero_point)
                        e = error(qp)
                        if e < kept[0]:
                            kept = (e, scale * factor)
                    qp[name] = (kept[1], zero_point)
                    current = kept[0]
                score(f'ranges searched, sweep {sweep + 1}', best, qp)


if __name__ == '__main__':
    main()
