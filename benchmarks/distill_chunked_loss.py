"""Distillation loss over chunks of positions vs over the whole batch's logits at once.

The alternative a user would write first is the full (M, B, T, V) student and teacher logits
in one go. Both variants compute the same loss and gradients (tests/proxy_models/test_distill.py);
this prints the peak memory (RSS of a fresh process per variant) and time of one
forward+backward step at a realistic vocabulary, and their ratios.

    python benchmarks/distill_chunked_loss.py [--vocab 32000] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from mixlab.proxy_models.config import GPTConfig
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.train import distill_loss

V, B, T, chunk = (int(x) for x in sys.argv[1:5])
torch.manual_seed(0)
teacher = GPT(GPTConfig(vocab_size=V, seq_len=T, n_layer=2, n_head=4, n_embd=128), seeds=(1,)).requires_grad_(False)
student = GPT(GPTConfig(vocab_size=V, seq_len=T, n_layer=1, n_head=2, n_embd=64), seeds=(2,))
idx = torch.randint(0, V, (1, B, T + 1))
x, y = idx[..., :-1], idx[..., 1:]
alpha = torch.tensor([0.5])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(3):
    start = time.perf_counter()
    h = student.hidden_states(x)
    h_cut = h.detach().requires_grad_()
    with torch.no_grad():
        h_t = teacher.hidden_states(x)
    loss, _ = distill_loss(student, teacher, h_cut, h_t, y, alpha, 2.0, chunk, backward_scale=1.0)
    h.backward(h_cut.grad)
    student.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"loss": float(loss[0]), "seconds": min(times), "peak_mib": (peak - base) / 1024}))
"""


def measure(vocab: int, batch: int, seq: int, chunk: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(vocab), str(batch), str(seq), str(chunk)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()
    full = measure(args.vocab, args.batch, args.seq, args.seq)
    chunked = measure(args.vocab, args.batch, args.seq, args.chunk)
    print(f"vocab {args.vocab}, batch {args.batch} x {args.seq} positions, one distillation step (CPU)")
    print(f"{'variant':<24}{'peak extra MiB':>16}{'seconds':>10}{'loss':>10}")
    for name, r in ((f"full logits (chunk {args.seq})", full), (f"chunked ({args.chunk})", chunked)):
        print(f"{name:<24}{r['peak_mib']:>16.0f}{r['seconds']:>10.3f}{r['loss']:>10.4f}")
    print(
        f"memory ratio full/chunked: {full['peak_mib'] / max(chunked['peak_mib'], 1e-9):.1f}x; "
        f"time ratio chunked/full: {chunked['seconds'] / full['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
