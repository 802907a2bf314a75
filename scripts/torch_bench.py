#!/usr/bin/env python3
"""PyTorch baselines for the CUDA backend's benchmark (adapters/profit-cuda/examples/bench.rs).

On the same card and sizes, times (CUDA events, median of --reps after --warmup):
  - torch.optim.AdamW(fused=True).step()  (28 B/param floor: read p, g, m, v; write p, m, v);
  - one PROFIT cycle (n_ref = 1, SGD reference, Adam main) written with torch ops: foreach
    copies and adds for the reference step, torch.dot / _foreach_norm for omega and |delta|^2,
    the projection, the restore, then torch.optim.Adam(fused=True).step()  (floor 60 B/param;
    its delta is the reference update itself, the accumulated delta);
in float32 and, with bf16 in --dtypes (the default), the same two in bfloat16 (parameters,
gradients, moments, anchor and delta in bf16, as torch keeps them; floors counted in bf16
bytes: 14 and 30 B/param), against the device-to-device copy bandwidth (dst.copy_(src), read +
write counted). Prints a markdown table with the same columns as the Rust benchmark.

    python3 scripts/torch_bench.py [--sizes 16M,256M] [--tensors 1,1000] [--dtypes f32,bf16]
        [--reps 20] [--warmup 3] [--device cuda]

`--device cpu` runs the same code on the CPU (wall-clock timing): a smoke test of the script
with tiny sizes, not a benchmark.
"""
import time

import argparse
import sys


def count(s):
    s = s.strip()
    mul = {"M": 1 << 20, "m": 1 << 20, "K": 1 << 10, "k": 1 << 10}.get(s[-1:], 1)
    return int(s[:-1] if mul > 1 else s) * mul


def label(n):
    return f"{n >> 20}M" if n % (1 << 20) == 0 else str(n)


def split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def bench_pair(torch, args, n, k, dtype, suffix, scale, tensors_for, time_ms, empty_cache, rows):
    """Time fused AdamW and the torch-op PROFIT cycle for n params in k tensors of `dtype`."""
    # Fused AdamW.
    params = [torch.nn.Parameter(t) for t in tensors_for(n, k, dtype)]
    for p, g in zip(params, tensors_for(n, k, dtype)):
        p.grad = g
    opt = torch.optim.AdamW(params, lr=args.lr, fused=True)
    ms = time_ms(opt.step)
    rows.append((f"torch AdamW(fused=True){suffix}", n, k, ms, 1.0, 28.0 * scale))
    del params, opt
    empty_cache()

    # PROFIT cycle with torch ops.
    params = [torch.nn.Parameter(t) for t in tensors_for(n, k, dtype)]
    grads = tensors_for(n, k, dtype)
    anchors = [torch.empty_like(p) for p in params]
    deltas = [torch.empty_like(p) for p in params]
    gproj = [torch.empty_like(p) for p in params]
    for p, g in zip(params, gproj):
        p.grad = g
    main = torch.optim.Adam(params, lr=args.lr, fused=True)
    pd = [p.data for p in params]

    def cycle():
        with torch.no_grad():
            # Reference call (SGD): anchor, theta += u, delta = u.
            torch._foreach_copy_(anchors, pd)
            torch._foreach_copy_(deltas, grads)
            torch._foreach_mul_(deltas, -args.lr_ref)
            torch._foreach_add_(pd, deltas)
            # Main call: reductions, projection, restore, Adam.
            omega = torch.stack([torch.dot(d.view(-1), g.view(-1)) for d, g in zip(deltas, grads)]).sum()
            dd = torch.stack(torch._foreach_norm(deltas)).square().sum()
            coef = torch.where((omega < 0) & (dd > 0), omega / dd, torch.zeros_like(omega))
            torch._foreach_copy_(gproj, grads)
            torch._foreach_add_(gproj, torch._foreach_mul(deltas, -coef))
            torch._foreach_copy_(pd, anchors)
        main.step()

    ms = time_ms(cycle)
    rows.append((f"torch profit cycle{suffix}", n, k, ms, 2.0, 60.0 * scale))
    del params, grads, anchors, deltas, gproj, main, pd
    empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16M,256M")
    ap.add_argument("--tensors", default="1,1000")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr-ref", type=float, default=1e-5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dtypes", default="f32,bf16", help="f32 and/or bf16")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test)")
    args = ap.parse_args()
    sizes = [count(s) for s in args.sizes.split(",")]
    tensors = [count(s) for s in args.tensors.split(",")]
    dtype_names = [d.strip() for d in args.dtypes.split(",")]
    if any(d not in ("f32", "bf16") for d in dtype_names):
        ap.error(f"--dtypes: f32 and/or bf16, not {args.dtypes}")

    import torch

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False")
        return 0
    dev = torch.device(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False

    def time_ms(fn):
        for _ in range(args.warmup):
            fn()
        if not cuda:
            times = []
            for _ in range(max(args.reps, 1)):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            return times[len(times) // 2]
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(max(args.reps, 1)):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2]

    def tensors_for(n, k, dtype):
        pattern = ((torch.arange(n, device=dev, dtype=torch.float32) % 1999) - 999.0) * 1e-3
        return [t.to(dtype, copy=True) for t in torch.split(pattern, split(n, k))]

    name = torch.cuda.get_device_name(dev) if cuda else "CPU"
    big = max(sizes)
    src = torch.empty(big, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src))
    copy = 2 * big * 4 / (copy_ms * 1e-3) / 1e9
    del src, dst
    print(f"device: {name}, torch {torch.__version__}, {' + '.join(dtype_names)}, median of {args.reps} reps after {args.warmup} warm-up")
    print(f"device-to-device copy bandwidth ({label(big)}, read + write): {copy:.0f} GB/s\n")

    def empty_cache():
        if cuda:
            torch.cuda.empty_cache()

    rows = []
    for dname in dtype_names:
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dname]
        suffix = "" if dname == "f32" else ", bf16"
        scale = dtype.itemsize / 4  # the floors are counted for 4-byte elements
        for n in sizes:
            for k in tensors:
                bench_pair(torch, args, n, k, dtype, suffix, scale, tensors_for, time_ms, empty_cache, rows)

    print("| what | params | tensors | ms per call | ms per batch | B/param | GB/s | % of copy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for what, n, k, ms, batches, bpp in rows:
        gbs = bpp * n / (ms * 1e-3) / 1e9
        print(f"| {what} | {label(n)} | {k} | {ms:.3f} | {ms / batches:.3f} | {bpp:g} | {gbs:.0f} | {100 * gbs / copy:.0f}% |")
    print(f"\ncopy bandwidth: {copy:.0f} GB/s on {name}")
    print("GB/s counts the floor bytes; the torch PROFIT cycle moves more (separate foreach passes).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
