#!/usr/bin/env python3
"""Time a PROFIT cycle through torch_profit's Python API against what a PyTorch user has.

Per size, tensor count and dtype, in one run (median wall time of --reps after --warmup):
  - ``torch_profit.PROFIT`` (SGD reference, AdamW main, realized delta): one cycle = a
    reference call and a main call, each a ``step()`` through the Python API; by default
    (non-finite gradients refused: one more read of the gradients at the reference call) and
    with ``non_finite="propagate"`` (no check, as torch.optim and the foreach cycle);
  - the fastest PROFIT written with torch ops over the parameter list (foreach, no Python loop
    per tensor): reference call ``_foreach_copy_`` (anchor) + ``_foreach_add_`` (SGD); main
    call ``delta = theta - anchor``, ``omega = <delta, g>`` from ``_foreach_mul`` and
    ``_foreach_powsum`` of its positive and negative parts (torch has no foreach sum),
    ``|delta|^2`` from ``_foreach_norm``, the projection, the restore, then
    ``torch.optim.AdamW(foreach=True).step()``; and the same with ``omega`` from ``torch.dot``
    per tensor (a Python loop, but fewer passes): the faster of the two is the baseline;
  - ``torch.optim.AdamW(foreach=True).step()`` (``fused=True`` on CUDA) for one batch;
  - the copy bandwidth (``dst.copy_(src)``, read + write counted).
Prints a markdown table and the ratios the issue asks for:

    python adapters/profit-torch/bench/bench.py [--sizes 16M] [--tensors 1,1000]
        [--dtypes f32,bf16] [--reps 10] [--warmup 2] [--device cpu|cuda]
"""
import argparse
import sys
import time


def count(s):
    s = s.strip()
    mul = {"M": 1 << 20, "K": 1 << 10}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mul > 1 else s) * mul


def label(n):
    return f"{n >> 20}M" if n % (1 << 20) == 0 else str(n)


def split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16M")
    ap.add_argument("--tensors", default="1,1000")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ratio", type=float, default=1e3)
    args = ap.parse_args()

    import torch
    import torch_profit

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device")
        return 0

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def time_ms(fn):
        for _ in range(args.warmup):
            fn()
        sync()
        times = []
        for _ in range(max(args.reps, 1)):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return times[len(times) // 2]

    def tensors_for(n, k, dtype):
        pattern = ((torch.arange(n, device=dev, dtype=torch.float32) % 1999) - 999.0) * 1e-3
        return [t.to(dtype, copy=True) for t in torch.split(pattern, split(n, k))]

    def params_with_grads(n, k, dtype):
        ps = [torch.nn.Parameter(t) for t in tensors_for(n, k, dtype)]
        for p, g in zip(ps, tensors_for(n, k, dtype)):
            p.grad = g
        return ps

    name = torch.cuda.get_device_name(dev) if cuda else f"CPU ({torch.get_num_threads()} torch threads)"
    big = max(count(s) for s in args.sizes.split(","))
    src = torch.ones(big, device=dev)
    dst = torch.empty_like(src)
    copy = 2 * big * 4 / (time_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9
    del src, dst
    print(f"device: {name}, torch {torch.__version__}, median of {args.reps} after {args.warmup} warm-up")
    print(f"copy bandwidth ({label(big)} f32, read + write): {copy:.1f} GB/s\n")

    lr, lr_ref = args.lr, args.lr / args.ratio
    rows, ratios = [], []
    for dname in args.dtypes.split(","):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dname.strip()]
        for n in (count(s) for s in args.sizes.split(",")):
            for k in (count(s) for s in args.tensors.split(",")):
                # torch AdamW, one batch.
                ps = params_with_grads(n, k, dtype)
                adamw = torch.optim.AdamW(ps, lr=lr, **({"fused": True} if cuda else {"foreach": True}))
                t_adamw = time_ms(adamw.step)
                del ps, adamw

                # torch_profit, one cycle (reference + main call).
                def ours(**kw):
                    ps = params_with_grads(n, k, dtype)
                    try:
                        opt = torch_profit.PROFIT(ps, lr=lr, main="adamw", ratio=args.ratio, weight_decay=0.0, **kw)
                        return time_ms(lambda: (opt.step(), opt.step()))
                    except torch_profit.ProfitDeviceError as e:
                        print(f"torch_profit on {dev}: {e}")
                        return float("nan")

                t_ours = ours()
                # Without the non-finite check (torch.optim's and the foreach cycle's behaviour).
                t_ours_prop = ours(non_finite="propagate")

                # foreach PROFIT, one cycle, in two flavours of omega.
                def foreach_cycle(dots):
                    ps = params_with_grads(n, k, dtype)
                    pd = [p.data for p in ps]
                    grads = [p.grad for p in ps]
                    anchors = [torch.empty_like(p) for p in pd]
                    deltas = [torch.empty_like(p) for p in pd]
                    inner = torch.optim.AdamW(ps, lr=lr, weight_decay=0.0, **({"fused": True} if cuda else {"foreach": True}))

                    def cycle():
                        with torch.no_grad():
                            torch._foreach_copy_(anchors, pd)
                            torch._foreach_add_(pd, grads, alpha=-lr_ref)
                            torch._foreach_copy_(deltas, pd)
                            torch._foreach_sub_(deltas, anchors)
                            if dots:
                                omega = torch.stack([torch.dot(d.view(-1), g.view(-1)) for d, g in zip(deltas, grads)]).sum()
                            else:
                                prod = torch._foreach_mul(deltas, grads)
                                pos = torch.stack(torch._foreach_powsum(torch._foreach_clamp_min(prod, 0.0), 1)).sum()
                                neg = torch.stack(torch._foreach_powsum(torch._foreach_clamp_max(prod, 0.0), 1)).sum()
                                omega = pos - neg
                            dd = torch.stack(torch._foreach_norm(deltas)).float().square().sum()
                            o, d = float(omega), float(dd)
                            if o < 0 and d > 0:
                                torch._foreach_add_(grads, deltas, alpha=-o / d)
                            torch._foreach_copy_(pd, anchors)
                        inner.step()

                    return time_ms(cycle)

                t_fe_sum = foreach_cycle(False)
                t_fe_dot = foreach_cycle(True)
                t_fe = min(t_fe_sum, t_fe_dot)
                suffix = "" if dtype == torch.float32 else ", bf16"
                rows += [
                    (f"torch_profit.PROFIT cycle{suffix}", n, k, t_ours, 2),
                    (f"torch_profit.PROFIT cycle, non_finite=propagate{suffix}", n, k, t_ours_prop, 2),
                    (f"foreach PROFIT cycle, omega by powsum{suffix}", n, k, t_fe_sum, 2),
                    (f"foreach PROFIT cycle, omega by torch.dot{suffix}", n, k, t_fe_dot, 2),
                    (f"torch AdamW step{suffix}", n, k, t_adamw, 1),
                ]
                ratios.append((dname, n, k, t_fe / t_ours, t_fe / t_ours_prop, (t_ours / 2) / t_adamw))

    print("| what | params | tensors | ms | ms per batch |")
    print("|---|---:|---:|---:|---:|")
    for what, n, k, ms, batches in rows:
        print(f"| {what} | {label(n)} | {k} | {ms:.2f} | {ms / batches:.2f} |")
    print("\n| dtype | params | tensors | foreach PROFIT / torch_profit (cycle) | same, non_finite=propagate | torch_profit per batch / AdamW step |")
    print("|---|---:|---:|---:|---:|---:|")
    for dname, n, k, speedup, speedup_prop, vs_adamw in ratios:
        print(f"| {dname} | {label(n)} | {k} | {speedup:.2f}x | {speedup_prop:.2f}x | {vs_adamw:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
