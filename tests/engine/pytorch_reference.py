#!/usr/bin/python3
"""PyTorch 1.13 eager-mode PTQ of the ResNet8 fixture: the reference quantd is checked and timed against.

Builds the quantizable ResNet8 from the fixtures' tools/resnet8.py (QuantStub, FloatFunctional adds), loads the
FP32 weights from the TorchScript fixture, fuses the standard groups, applies get_default_qconfig(QCONFIG),
calibrates on calib_batch.bin in batches of 100 and converts, on the kernel engine ENGINE. Prints JSON:
top-1 on the test set, per-layer qparams, and (with --bench) timings on 1 thread.

--fusion auto also fuses each residual add with the ReLU after it (FloatFunctional.add_relu), as quantd's
automatic fusion does. --trace OUT.pt writes the FP32 ResNet8 exported with torch.jit.trace and exits.

Usage: /usr/bin/python3 pytorch_reference.py --fixtures DIR --qconfig fbgemm [--engine onednn] [--fusion groups|auto]
       [--preds OUT.u8] [--bench] [--artifact quantd.pt --artifact-preds OUT.u8] [--trace OUT.pt]
"""
import argparse, json, os, sys, time, types

import numpy as np
import torch

FUSE_GROUPS = [['conv1', 'bn1', 'relu1'],
               ['layer1.conv1', 'layer1.bn1', 'layer1.relu1'], ['layer1.conv2', 'layer1.bn2'],
               ['layer2.conv1', 'layer2.bn1', 'layer2.relu1'], ['layer2.conv2', 'layer2.bn2'],
               ['layer3.conv1', 'layer3.bn1', 'layer3.relu1'], ['layer3.conv2', 'layer3.bn2']]


def read_cifar(path):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32)), raw[:, 0].astype(np.int64)


def make_qconfig(name):
    from torch.ao.quantization import QConfig, get_default_qconfig
    from torch.ao.quantization.observer import MinMaxObserver, default_per_channel_weight_observer
    if name == 'minmax':  # custom: MinMax activations, per-channel symmetric weights
        return QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8), weight=default_per_channel_weight_observer)
    return get_default_qconfig(name)


def block_forward_add_relu(block, x):
    """BasicBlock.forward with the residual add and relu2 as one FloatFunctional.add_relu."""
    y = block.relu1(block.bn1(block.conv1(block.pad(x))))
    y = block.bn2(block.conv2(y))
    return block.skip_add.add_relu(block.shortcut(x), y)


def quantize(fixtures, qconfig_name, calib, fusion='groups'):
    from torch.ao.quantization import convert, fuse_modules, prepare
    sys.path.insert(0, os.path.join(fixtures, 'tools'))
    from resnet8 import ResNet8
    fp32 = torch.jit.load(os.path.join(fixtures, 'models', 'resnet8_fp32.torchscript.pt'))
    start = time.perf_counter()
    m = ResNet8(quantizable=True)
    missing, unexpected = m.load_state_dict(fp32.state_dict(), strict=False)
    assert not unexpected and all('quant' in k for k in missing), (missing, unexpected)
    m.eval()
    if fusion == 'auto':
        for block in (m.layer1, m.layer2, m.layer3):
            block.forward = types.MethodType(block_forward_add_relu, block)
    m = fuse_modules(m, FUSE_GROUPS)
    m.qconfig = make_qconfig(qconfig_name)
    p = prepare(m)
    with torch.no_grad():
        for i in range(0, calib.shape[0], 100):
            p(calib[i:i + 100])
    q = convert(p)
    return q, time.perf_counter() - start


def qparams(q):
    out = {'quant': {'scale': float(q.quant.scale), 'zero_point': int(q.quant.zero_point)}}
    for name, mod in q.named_modules():
        if hasattr(mod, 'weight') and callable(mod.weight):
            w = mod.weight()
            ws = w.q_per_channel_scales().tolist() if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) \
                else [float(w.q_scale())]
            out[name] = {'scale': float(mod.scale), 'zero_point': int(mod.zero_point), 'weight_scales': ws}
        elif type(mod).__name__ == 'QFunctional':
            out[name] = {'scale': float(mod.scale), 'zero_point': int(mod.zero_point)}
    return out


def predict(model, x):
    preds = []
    with torch.no_grad():
        for i in range(0, x.shape[0], 500):
            preds.append(model(x[i:i + 500]).argmax(1))
    return torch.cat(preds).numpy()


def bench(model, x):
    with torch.no_grad():
        one = x[:1]
        for _ in range(50):
            model(one)
        times = []
        for _ in range(500):
            t = time.perf_counter()
            model(one)
            times.append(time.perf_counter() - t)
        batch = x[:256]
        for _ in range(3):
            model(batch)
        rounds = []  # median of 5 rounds of 10 batches: one slow round does not decide
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(10):
                model(batch)
            rounds.append(10 * 256 / (time.perf_counter() - t))
    return {'batch1_latency_ms': 1000 * float(np.median(times)), 'batch256_images_per_s': float(np.median(rounds))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--fixtures', required=True)
    ap.add_argument('--qconfig', default='fbgemm', help='fbgemm|x86|onednn|qnnpack, or minmax (custom)')
    ap.add_argument('--engine', default='onednn')
    ap.add_argument('--fusion', default='groups', choices=['groups', 'auto'])
    ap.add_argument('--trace')
    ap.add_argument('--preds')
    ap.add_argument('--bench', action='store_true')
    ap.add_argument('--quantize-runs', type=int, default=3)
    ap.add_argument('--artifact')
    ap.add_argument('--artifact-preds')
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.backends.quantized.engine = a.engine
    if a.trace:
        # The most common way people export: torch.jit.trace of the eager FP32 model.
        sys.path.insert(0, os.path.join(a.fixtures, 'tools'))
        from resnet8 import ResNet8
        m = ResNet8()
        m.load_state_dict(torch.jit.load(os.path.join(a.fixtures, 'models', 'resnet8_fp32.torchscript.pt')).state_dict())
        m.eval()
        torch.jit.trace(m, torch.rand(2, 3, 32, 32) * 255).save(a.trace)
        print(json.dumps({'traced': a.trace}))
        return
    x, y = read_cifar(os.path.join(a.fixtures, 'cifar10', 'test_batch.bin'))
    result = {'torch': torch.__version__, 'qconfig': a.qconfig, 'engine': a.engine, 'fusion': a.fusion}
    if a.artifact:
        # Load quantd's artifact exactly as a user would.
        art = torch.jit.load(a.artifact)
        preds = predict(art, x)
        result['artifact_correct'] = int((preds == y).sum())
        if a.artifact_preds:
            preds.astype(np.uint8).tofile(a.artifact_preds)
        if a.bench:
            result['artifact_timing'] = bench(art, x)
        print(json.dumps(result))
        return
    calib, _ = read_cifar(os.path.join(a.fixtures, 'cifar10', 'calib_batch.bin'))
    q, seconds = quantize(a.fixtures, a.qconfig, calib, a.fusion)
    preds = predict(q, x)
    result['correct'] = int((preds == y).sum())
    result['qparams'] = qparams(q)
    if a.preds:
        preds.astype(np.uint8).tofile(a.preds)
    if a.bench:
        times = [seconds] + [quantize(a.fixtures, a.qconfig, calib)[1] for _ in range(a.quantize_runs - 1)]
        # Also on both cores of a 2-core machine, the like-for-like baseline
        # for quantd's multi-threaded figure.
        torch.set_num_threads(2)
        times_2 = [quantize(a.fixtures, a.qconfig, calib)[1] for _ in range(a.quantize_runs)]
        torch.set_num_threads(1)
        scripted = torch.jit.script(q)
        result['timing'] = {'quantize_s': float(np.median(times)), 'quantize_2_threads_s': float(np.median(times_2)),
                            'int8_torchscript': bench(scripted, x)}
    print(json.dumps(result))


if __name__ == '__main__':
    main()
