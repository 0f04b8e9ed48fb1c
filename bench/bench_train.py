"""Training throughput: ueperf vs a plain PyTorch reference loop, side by side in one run.

    python bench/bench_train.py                          # CPU-sized defaults
    python bench/bench_train.py --n 50000 --size 32 --steps 200 --compile   # GPU, CIFAR shape
    python bench/bench_train.py --n 50000 --size 64 --steps 100 --compile   # GPU, 64x64

Reference ("plain PyTorch"): torch.utils.data.DataLoader over a Dataset whose __getitem__ does
per-sample uint8 → float, zero-pad 4, random crop, random flip in torch; fp32 model in NCHW;
SGD step. ueperf: the whole uint8 set resident on the device, the fused augmentation kernel
(Triton on CUDA), bf16 autocast + channels-last (+ torch.compile with --compile), the engine's
train step. Same model, same data shape, same batch size, same optimiser. Both are timed over
`--steps` steps after `--warmup` steps; the report gives images/s and the ratio.

Floors (printed): model FLOPs per image (fwd ≈ 1/3 of fwd+bwd) and the bytes the loader moves.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness import sync  # noqa: E402  (bench/ is on the path: run as a script)


class RefDataset(torch.utils.data.Dataset):
    """Per-sample transforms, as a torchvision-style pipeline would do them."""

    def __init__(self, x, y, pad=4):
        self.x, self.y, self.pad = x, y, pad

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = torch.from_numpy(np.ascontiguousarray(self.x[i])).permute(2, 0, 1).float().div_(255)
        H, W = img.shape[1:]
        p = self.pad
        img = F.pad(img, (p, p, p, p))
        dy, dx = np.random.randint(0, 2 * p + 1, size=2)
        img = img[:, dy:dy + H, dx:dx + W]
        if np.random.rand() < 0.5:
            img = img.flip(2)
        return img, int(self.y[i])


def flops_per_image(model, size, dev):
    """Forward multiply-adds ×2 of conv/linear layers, counted with hooks on one image."""
    total = [0]

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += 2 * k * out.numel()

    def lin_hook(m, inp, out):
        total[0] += 2 * m.in_features * out.numel()

    hs = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hs += [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()
        model(torch.zeros(1, 3, size, size, device=dev))
        model.train()
    for h in hs:
        h.remove()
    return total[0]


def bench_reference(args, x, y, dev, num_classes):
    from ueperf.models import build_model
    torch.manual_seed(0)
    model = build_model(args.model, num_classes, args.size, width=args.width).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    dl = torch.utils.data.DataLoader(RefDataset(x, y), batch_size=args.batch, shuffle=True, drop_last=True,
                                     num_workers=args.workers, pin_memory=dev.type == "cuda",
                                     persistent_workers=args.workers > 0)
    it = iter(dl)
    done, t0 = 0, None
    total = args.warmup + args.steps
    while done < total:
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(dl)
            continue
        if done == args.warmup:
            sync(dev)
            t0 = time.perf_counter()
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    sync(dev)
    return args.steps * args.batch / (time.perf_counter() - t0)


def bench_ueperf(args, store, dev):
    from ueperf.config import RunConfig
    from ueperf.engine.trainer import Trainer
    cfg = RunConfig()
    cfg.model.name, cfg.model.width = args.model, args.width
    cfg.train.batch_size = args.batch
    cfg.train.compile = args.compile
    cfg.train.progress = False
    cfg.train.precision = args.precision
    cfg.train.device = str(dev)
    cfg.train.log_every = 10 ** 9
    cfg.train.epochs = 1
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, store=store, run_dir=d).setup()
        gen = torch.Generator(device=dev)
        gen.manual_seed(0)
        model, wrapped = tr.model, tr.wrapped
        model.train()
        tr.set_lr(0.0)
        loader = tr.train_loader
        batches = []
        total = args.warmup + args.steps
        it = iter(loader)
        done, t0 = 0, None
        while done < total:
            try:
                xb, yb, ib = next(it)
            except StopIteration:
                loader.set_epoch(done)
                it = iter(loader)
                continue
            if done == args.warmup:
                sync(dev)
                t0 = time.perf_counter()
            xa = tr.augmenter(xb, generator=gen, out_dtype=tr.input_dtype)
            with tr._autocast():
                loss = F.cross_entropy(tr.runner(xa).float(), yb)
            wrapped.backward_step(loss)
            done += 1
        sync(dev)
        rate = args.steps * args.batch / (time.perf_counter() - t0)
        tr.close()
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="training images (CIFAR: 50000)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=float, default=None, help="width multiplier (default 1 on GPU, 0.25 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="default 512 on GPU, 128 on CPU")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="reference DataLoader workers")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="append a markdown row to this file")
    args = ap.parse_args()
    dev = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if args.device == "auto" else args.device))
    gpu = dev.type == "cuda"
    args.width = args.width if args.width is not None else (1.0 if gpu else 0.25)
    args.batch = args.batch or (512 if gpu else 128)
    args.steps = args.steps or (100 if gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (20 if gpu else 2)
    args.workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1) if gpu else 1

    from ueperf.data.store import write_store
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.n, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, args.classes, size=args.n).astype(np.int64)
    with tempfile.TemporaryDirectory() as d:
        store = write_store(Path(d) / "bench", train=(x, y), test=(x[:256], y[:256]),
                            classes=[str(i) for i in range(args.classes)], meta={"source": "bench random"})
        from ueperf.models import build_model
        fl = flops_per_image(build_model(args.model, args.classes, args.size, width=args.width).to(dev), args.size, dev)
        ref = bench_reference(args, x, y, dev, args.classes)
        ours = bench_ueperf(args, store, dev)
    hw = torch.cuda.get_device_name(dev) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"hardware: {hw}; torch {torch.__version__}")
    print(f"model {args.model} width {args.width} at {args.size}px: {fl / 1e9:.3f} GFLOP/image forward, "
          f"≈{3 * fl / 1e9:.3f} GFLOP/image train step")
    print(f"loader bytes/step: {args.batch * args.size * args.size * 3} uint8 (ueperf, on device) vs "
          f"{args.batch * args.size * args.size * 3 * 4} fp32 host→device (reference)")
    print(f"| provider | images/s | ratio |\n|---|---|---|\n| reference (DataLoader, per-sample, fp32) | {ref:,.0f} | 1.00 |\n"
          f"| ueperf ({'compile, ' if args.compile else ''}{args.precision}, fused augment) | {ours:,.0f} | {ours / ref:.2f} |")
    print(f"ueperf achieves {ours * 3 * fl / 1e12:.2f} TFLOP/s of model math")
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"| {hw} | {args.model} w{args.width} | {args.size} | {args.batch} | {ref:,.0f} | {ours:,.0f} | {ours / ref:.2f} |\n")


if __name__ == "__main__":
    main()
