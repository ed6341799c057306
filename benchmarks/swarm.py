"""Training M proxies: a Python loop over M single models vs one swarm of M, same config and tokens.

Prints tokens/s of each, their ratio and, on CUDA, the model FLOP utilisation. Both train
with the stages' own step (`mixlab.proxy_models.train`: same device set-up, bf16 autocast,
per-model clipping). Needs torch, numpy, pyarrow and mixlab's sources (no polars / Dask), so
it runs on a bare GPU box:

    python benchmarks/swarm.py                    # M in {8, 32}, sizes picked for the device
    python benchmarks/swarm.py --m 8,32,128 --steps 30 --n-embd 128 --n-layer 5
    python benchmarks/swarm.py --all-gpus --m 32       # one swarm per local GPU, summed tokens/s
    torchrun --nproc-per-node 8 benchmarks/swarm.py --ddp   # data-parallel pretrain step tokens/s
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing
from mixlab.proxy_models import train  # noqa: E402
from mixlab.proxy_models.config import GPTConfig, count_params, flops_per_token  # noqa: E402
from mixlab.proxy_models.model import GPT  # noqa: E402

# Dense bf16 peak FLOP/s, for MFU; pass --peak-tflops for other devices.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "L4": 121.0,
    "4090": 165.0,
}


def train_steps(models: list[GPT], optimizers: list, batches: torch.Tensor, device: str) -> float:
    """Run every step for every model (a loop when len(models) > 1); returns seconds."""
    steps = [train.lm_step(model, device) for model in models]
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step_batch in batches:  # (M, B, T+1)
        offset = 0
        for model, opt, step in zip(models, optimizers, steps):
            batch = step_batch[offset : offset + model.M]  # the same tokens each way
            offset += model.M
            opt.zero_grad(set_to_none=True)
            step(batch, 1.0)
            model.clip_grad_norm_per_model(1.0)
            opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(
    cfg: GPTConfig, M: int, steps: int, warmup: int, batch_size: int, device: str
) -> tuple[float, float]:
    """(loop tokens/s, swarm tokens/s) for M models."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (warmup + steps, M, batch_size, cfg.seq_len + 1), generator=gen)
    data = data.to(device)
    tokens = steps * M * batch_size * cfg.seq_len
    singles = [GPT(cfg, [m]).to(device) for m in range(M)]
    single_opts = [m.configure_optimizer(1e-3) for m in singles]
    swarm = GPT(cfg, list(range(M))).to(device)
    swarm_opts = [swarm.configure_optimizer(1e-3)]
    train_steps(singles, single_opts, data[:warmup], device)
    loop_s = train_steps(singles, single_opts, data[warmup:], device)
    del singles, single_opts
    train_steps([swarm], swarm_opts, data[:warmup], device)
    swarm_s = train_steps([swarm], swarm_opts, data[warmup:], device)
    return tokens / loop_s, tokens / swarm_s


def _swarm_on_gpu(index: int, cfg: GPTConfig, M: int, steps: int, warmup: int, batch_size: int, out) -> None:
    """One GPU's swarm tokens/s (a spawned process per GPU, as the Dask GPU workers run packs)."""
    torch.cuda.set_device(index)
    out.put(bench(cfg, M, steps, warmup, batch_size, "cuda")[1])


def all_gpus(cfg: GPTConfig, M: int, steps: int, warmup: int, batch_size: int) -> tuple[int, float]:
    """(GPUs, summed swarm tokens/s) with one swarm of M on every local GPU at once."""
    import torch.multiprocessing as mp

    n = torch.cuda.device_count()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_swarm_on_gpu, args=(i, cfg, M, steps, warmup, batch_size, queue))
        for i in range(n)
    ]
    for proc in procs:
        proc.start()
    total = sum(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    return n, total


def ddp_tokens_per_s(
    cfg: GPTConfig, steps: int, warmup: int, batch_size: int, device: str, compile_: bool
) -> float:
    """Data-parallel pretrain steps (torchrun; each rank batch_size sequences): global tokens/s."""
    from mixlab.proxy_models.ranks import average_gradients, init_ranks

    ranks = init_ranks(device)
    model = GPT(cfg, [0]).to(device)
    opt = model.configure_optimizer(1e-3)
    step = train.lm_step(torch.compile(model) if compile_ else model, device)
    gen = torch.Generator().manual_seed(ranks.rank)
    data = torch.randint(0, cfg.vocab_size, (warmup + steps, 1, batch_size, cfg.seq_len + 1), generator=gen)
    data = data.to(device)
    for k, batch in enumerate(data):
        if k == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step(batch, 1.0)
        if ranks.world > 1:
            average_gradients(model, ranks)
        model.clip_grad_norm_per_model(1.0)
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * ranks.world * batch_size * cfg.seq_len / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", default="8,32", help="swarm sizes to compare, comma separated")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 8192 CUDA, 1024 CPU)")
    p.add_argument(
        "--n-embd", type=int, default=None, help="width (default 128 CUDA: ~1M non-embedding params; 64 CPU)"
    )
    p.add_argument("--n-layer", type=int, default=None, help="layers (default 5 CUDA, 2 CPU)")
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=None, help="default 256 CUDA, 64 CPU")
    p.add_argument(
        "--batch-size", type=int, default=None, help="sequences per model per step (default 16 CUDA, 8 CPU)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s for MFU")
    p.add_argument("--all-gpus", action="store_true", help="also: one swarm per local GPU at once (CUDA)")
    p.add_argument(
        "--ddp", action="store_true", help="only: data-parallel pretrain tokens/s (run under torchrun)"
    )
    p.add_argument("--compile", action="store_true", help="with --ddp: torch.compile the model")
    args = p.parse_args()

    device = train.setup_device(args.device, args.threads)
    gpu = device == "cuda"
    cfg = GPTConfig(
        vocab_size=args.vocab or (8192 if gpu else 1024),
        seq_len=args.seq_len or (256 if gpu else 64),
        n_layer=args.n_layer or (5 if gpu else 2),
        n_head=args.n_head,
        n_embd=args.n_embd or (128 if gpu else 64),
    )
    steps = args.steps or (20 if gpu else 5)
    batch_size = args.batch_size or (16 if gpu else 8)
    name = train.device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if gpu and k in name), None)
    fpt = flops_per_token(cfg)
    if args.ddp:
        tps = ddp_tokens_per_s(cfg, steps, args.warmup, batch_size, device, args.compile)
        if int(os.environ.get("RANK", "0")) == 0:
            mfu = (
                f"; MFU {100 * tps * fpt / (peak * 1e12 * int(os.environ.get('WORLD_SIZE', '1'))):.2f}%"
                if peak
                else ""
            )
            print(f"ddp pretrain ({'compiled' if args.compile else 'eager'}): {tps:,.0f} tokens/s{mfu}")
        return
    print(
        f"device: {name}; model: {count_params(cfg, non_embedding=True):,} non-embedding params "
        f"({count_params(cfg):,} total), L={cfg.n_layer} C={cfg.n_embd} V={cfg.vocab_size} T={cfg.seq_len} "
        f"B={batch_size}; {steps} timed steps; {fpt / 1e6:.1f} MFLOP/token"
    )
    header = f"{'M':>4} {'loop tok/s':>12} {'swarm tok/s':>12} {'swarm/loop':>10}"
    if peak:
        header += f" {'MFU loop':>9} {'MFU swarm':>9}"
    print(header)
    for M in (int(x) for x in args.m.split(",")):
        loop_tps, swarm_tps = bench(cfg, M, steps, args.warmup, batch_size, device)
        line = f"{M:>4} {loop_tps:>12,.0f} {swarm_tps:>12,.0f} {swarm_tps / loop_tps:>9.2f}x"
        if peak:
            line += f" {100 * loop_tps * fpt / (peak * 1e12):>8.2f}% {100 * swarm_tps * fpt / (peak * 1e12):>8.2f}%"
        print(line, flush=True)
        if args.all_gpus and gpu:
            n, total = all_gpus(cfg, M, steps, args.warmup, batch_size)
            print(
                f"{M:>4} swarm on {n} GPU(s) at once: {total:,.0f} tokens/s ({total / swarm_tps:.2f}x one GPU)"
            )


if __name__ == "__main__":
    main()
