"""Training M proxies: a Python loop over M single models vs one swarm of M, same config and tokens.

Prints tokens/s of each, their ratio and, on CUDA, the model FLOP utilisation; with
--all-gpus also one swarm per local GPU at once (the packs of a GPU LocalCluster), and with
--ddp the data-parallel pretrain step's tokens/s under torchrun (eager, and compiled with
--compile). Everything trains with the stages' own code (`mixlab.proxy_models.step`: device
set-up, bf16 autocast, the next-token step; `model`: the swarm GPT and its per-model clipping;
`ranks`: the gradient all-reduce). It imports torch, numpy and mixlab's torch-only modules
(no pyarrow, safetensors, YAML or Dask), so it runs on a bare GPU box from a checkout:

    python benchmarks/swarm.py                    # M in {8, 32}, sizes picked for the device
    python benchmarks/swarm.py --m 8,32,128 --steps 30 --n-embd 128 --n-layer 5
    python benchmarks/swarm.py --all-gpus --m 32       # one swarm per local GPU, summed tokens/s
    torchrun --nproc-per-node 8 benchmarks/swarm.py --ddp --compile   # DDP pretrain, eager and compiled
    python benchmarks/swarm.py --smoke            # seconds on a CPU: every mode, tiny sizes
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing
from mixlab.proxy_models import step as train  # noqa: E402  (the training core's torch-only part)
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


def _swarm_on_device(
    index: int, device: str, cfg: GPTConfig, M: int, steps: int, warmup: int, batch_size: int, out
) -> None:
    """One device's swarm tokens/s (a spawned process per GPU, as the Dask GPU workers run packs)."""
    if device == "cuda":
        torch.cuda.set_device(index)
    else:
        torch.set_num_threads(1)
    out.put(bench(cfg, M, steps, warmup, batch_size, device)[1])


def all_devices(
    cfg: GPTConfig, M: int, steps: int, warmup: int, batch_size: int, device: str, n: int
) -> float:
    """Summed swarm tokens/s with one swarm of M on each of `n` devices at once (processes)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (device, cfg, M, steps, warmup, batch_size, queue)
    procs = [ctx.Process(target=_swarm_on_device, args=(i, *args)) for i in range(n)]
    for proc in procs:
        proc.start()
    total = sum(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    return total


def ddp_tokens_per_s(
    cfg: GPTConfig, steps: int, warmup: int, batch_size: int, device: str, compile_: bool
) -> tuple[float, int]:
    """Data-parallel pretrain steps (torchrun; each rank batch_size sequences): (global tokens/s, ranks).

    The step of `mixlab pretrain` under torchrun: forward/backward, one all-reduce of the
    gradients, per-model clipping, AdamW; `compile_` compiles the blocks as --compile does.
    """
    from mixlab.proxy_models.ranks import average_gradients, init_ranks

    ranks = init_ranks(device)
    model = GPT(cfg, [0]).to(device)
    if compile_:
        model.compile_blocks()
    opt = model.configure_optimizer(1e-3)
    step = train.lm_step(model, device)
    gen = torch.Generator().manual_seed(ranks.rank)
    data = torch.randint(0, cfg.vocab_size, (warmup + steps, 1, batch_size, cfg.seq_len + 1), generator=gen)
    data = data.to(device)
    start = time.perf_counter()
    for k, batch in enumerate(data):
        if k == warmup:  # the compile (and the first all-reduces) happen in the warm-up
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
    return steps * ranks.world * batch_size * cfg.seq_len / (time.perf_counter() - start), ranks.world


def report_ddp(cfg: GPTConfig, steps: int, warmup: int, batch_size: int, device: str, compile_: bool,
               peak: float | None) -> None:  # fmt: skip
    """Eager DDP tokens/s, and compiled beside it with `compile_`; rank 0 prints."""
    fpt = flops_per_token(cfg)
    eager, world = ddp_tokens_per_s(cfg, steps, warmup, batch_size, device, False)
    results = {"eager": eager}
    if compile_:
        results["compiled"] = ddp_tokens_per_s(cfg, steps, warmup, batch_size, device, True)[0]
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for name, tps in results.items():
        mfu = f"; MFU {100 * tps * fpt / (peak * 1e12 * world):.2f}%" if peak else ""
        print(f"ddp pretrain on {world} rank(s), {name}: {tps:,.0f} tokens/s{mfu}", flush=True)
    if compile_:
        print(f"ddp pretrain compiled/eager: {results['compiled'] / eager:.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", default=None, help="swarm sizes to compare, comma separated (default 8,32)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 8192 CUDA, 1024 CPU)")
    p.add_argument(
        "--n-embd", type=int, default=None, help="width (default 128 CUDA: ~1M non-embedding params; 64 CPU)"
    )
    p.add_argument("--n-layer", type=int, default=None, help="layers (default 5 CUDA, 2 CPU)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads (default 4)")
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
    p.add_argument("--compile", action="store_true", help="with --ddp: also with torch.compile'd blocks")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes that run in seconds on a CPU, through every mode (--all-gpus on 2 CPU processes)",
    )
    args = p.parse_args()

    tiny = args.smoke  # every size flag still overrides
    device = train.setup_device(args.device, args.threads or (1 if tiny else 0))
    gpu = device == "cuda"
    cfg = GPTConfig(
        vocab_size=args.vocab or (64 if tiny else 8192 if gpu else 1024),
        seq_len=args.seq_len or (16 if tiny else 256 if gpu else 64),
        n_layer=args.n_layer or (1 if tiny else 5 if gpu else 2),
        n_head=args.n_head or (2 if tiny else 4),
        n_embd=args.n_embd or (16 if tiny else 128 if gpu else 64),
    )
    steps = args.steps or (2 if tiny else 20 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    batch_size = args.batch_size or (2 if tiny else 16 if gpu else 8)
    sizes = [int(x) for x in (args.m or ("2,4" if tiny else "8,32")).split(",")]
    name = train.device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if gpu and k in name), None)
    fpt = flops_per_token(cfg)
    if args.ddp:
        report_ddp(cfg, steps, warmup, batch_size, device, args.compile, peak)
        return
    print(
        f"device: {name}; model: {count_params(cfg, non_embedding=True):,} non-embedding params "
        f"({count_params(cfg):,} total), L={cfg.n_layer} C={cfg.n_embd} V={cfg.vocab_size} T={cfg.seq_len} "
        f"B={batch_size}; {steps} timed steps; {fpt / 1e6:.3g} MFLOP/token"
    )
    header = f"{'M':>4} {'loop tok/s':>12} {'swarm tok/s':>12} {'swarm/loop':>10}"
    if peak:
        header += f" {'MFU loop':>9} {'MFU swarm':>9}"
    print(header)
    devices = torch.cuda.device_count() if gpu else 2 if tiny else 0
    for M in sizes:
        loop_tps, swarm_tps = bench(cfg, M, steps, warmup, batch_size, device)
        line = f"{M:>4} {loop_tps:>12,.0f} {swarm_tps:>12,.0f} {swarm_tps / loop_tps:>9.2f}x"
        if peak:
            line += f" {100 * loop_tps * fpt / (peak * 1e12):>8.2f}% {100 * swarm_tps * fpt / (peak * 1e12):>8.2f}%"
        print(line, flush=True)
        if (args.all_gpus or tiny) and devices:
            total = all_devices(cfg, M, steps, warmup, batch_size, device, devices)
            what = "GPU(s)" if gpu else "CPU processes"
            print(
                f"{M:>4} swarm on {devices} {what} at once: {total:,.0f} tokens/s ({total / swarm_tps:.2f}x one)"
            )
    if tiny:  # the DDP step in this one process (torchrun ... --ddp --smoke runs it on several)
        report_ddp(cfg, steps, warmup, batch_size, device, False, peak)


if __name__ == "__main__":
    main()
