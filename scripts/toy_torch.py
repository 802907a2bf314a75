#!/usr/bin/env python3
"""The paper's 2-D toy (EXPERIMENTS.md, section 1) in PyTorch, to cross-check `profit toy` and to test
why a float32 PyTorch PROFIT can behave differently: PROFIT with delta accumulated from the
reference updates (the accumulated mode of profit-core) against delta taken as
`theta' - theta_ref` in float32 (naive). Settings as `profit toy` (ReLU, batch 512, label noise
0.1, MSE on 10,000 noise-free test points per domain, SGD reference, RMSprop main).

    python3 scripts/toy_torch.py --hidden 128 --seeds 0 1 2 --ratio 1e4
"""
import argparse
import math

import torch


def f(x):
    return torch.sin(10 * x.norm(dim=1, keepdim=True))


def data(n, lo, hi, noise, g):
    x = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    return x, f(x) + noise * torch.randn(n, 1, generator=g)


def net(h):
    return torch.nn.Sequential(torch.nn.Linear(2, h), torch.nn.LayerNorm(h), torch.nn.ReLU(),
                               torch.nn.Linear(h, h), torch.nn.LayerNorm(h), torch.nn.ReLU(),
                               torch.nn.Linear(h, 1))


def mse(m, x, y):
    with torch.no_grad():
        return torch.mean((m(x) - y) ** 2).item()


def grads(m, x, y, rows):
    m.zero_grad()
    loss = torch.mean((m(x[rows]) - y[rows]) ** 2)
    loss.backward()
    return [p.grad.detach().clone() for p in m.parameters()]


def finetune(m, x, y, steps, lr, batch, g, mode, ratio):
    params = list(m.parameters())
    main = torch.optim.RMSprop(params, lr=lr, foreach=False)
    sched = torch.optim.lr_scheduler.StepLR(main, 100, 0.95)
    fired = cos_sum = mains = 0
    anchor = delta = None
    for step in range(steps):
        rows = torch.randint(0, len(x), (batch,), generator=g)
        gr = grads(m, x, y, rows)
        lr_now = main.param_groups[0]["lr"]
        if mode == "full":
            for p, gg in zip(params, gr):
                p.grad = gg
            main.step()
        elif step % 2 == 0:  # reference call: SGD at lr / ratio
            with torch.no_grad():
                anchor = [p.detach().clone() for p in params]
                before = [p.detach().clone() for p in params]
                for p, gg in zip(params, gr):
                    p.add_(gg, alpha=-lr_now / ratio)
                # exact: the update itself (what was asked to move); naive: what moved in float32
                if mode == "exact":
                    delta = [(-lr_now / ratio) * gg for gg in gr]
                else:
                    delta = [p.detach() - b for p, b in zip(params, before)]
        else:  # main call
            om = sum((d.double() * gg.double()).sum().item() for d, gg in zip(delta, gr))
            dd = sum((d.double() ** 2).sum().item() for d in delta)
            gn = sum((gg.double() ** 2).sum().item() for gg in gr)
            mains += 1
            if dd > 0 and gn > 0:
                cos_sum += om / math.sqrt(dd * gn)
            if om < 0 and dd > 0:
                fired += 1
                gr = [gg - (om / dd) * d for gg, d in zip(gr, delta)]
            with torch.no_grad():
                for p, a in zip(params, anchor):
                    p.copy_(a)
            for p, gg in zip(params, gr):
                p.grad = gg
            main.step()
        sched.step()
    return fired, mains, (cos_sum / mains if mains else float("nan"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--ratio", type=float, default=1e4)
    ap.add_argument("--pretrain", type=int, default=10000)
    ap.add_argument("--finetune", type=int, default=1500)
    a = ap.parse_args()
    torch.set_num_threads(2)
    for seed in a.seeds:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        xo, yo = data(50000, -1.0, 1.0, 0.1, g)
        xn, yn = data(50000, 0.8, 1.5, 0.1, g)
        to, _ = data(10000, -1.0, 1.0, 0.0, g)
        tn, _ = data(10000, 0.8, 1.5, 0.0, g)
        tyo, tyn = f(to), f(tn)
        m = net(a.hidden)
        opt = torch.optim.RMSprop(m.parameters(), lr=1e-2, foreach=False)
        sched = torch.optim.lr_scheduler.StepLR(opt, a.pretrain // 20, 0.9)
        for _ in range(a.pretrain):
            rows = torch.randint(0, 50000, (512,), generator=g)
            opt.zero_grad()
            torch.mean((m(xo[rows]) - yo[rows]) ** 2).backward()
            opt.step()
            sched.step()
        state = {k: v.clone() for k, v in m.state_dict().items()}
        print(f"seed {seed} pretrained: original {mse(m, to, tyo):.4g} new {mse(m, tn, tyn):.4g}", flush=True)
        for mode in ["full", "exact", "naive"]:
            m.load_state_dict(state)
            gf = torch.Generator().manual_seed(1000 + seed)
            fired, mains, cos = finetune(m, xn, yn, a.finetune, 5e-4, 512, gf, mode, a.ratio)
            extra = f" projection fired {fired}/{mains}, mean cos {cos:.4f}" if mode != "full" else ""
            print(f"seed {seed} {mode:>5}: original {mse(m, to, tyo):.4g} new {mse(m, tn, tyn):.4g}{extra}", flush=True)


if __name__ == "__main__":
    main()
