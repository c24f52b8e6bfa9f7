"""Peak live tensor bytes of measure_heads, beyond the model's weights, in any checkout.

The deterministic memory measure of selfrepair/live_tensors.py (issue 38), run on the engine of
the checkout given (its own selfrepair package and random_model: the first engine, e35a9f7, as
well as today's), on a random model of gpt2-small's or the demo's shapes, with the engine's
defaults unless told. Each repeat is a fresh call of measure_heads in the same process, the
first one cold. Prints the peak and what was alive at it, grouped, largest first.

    python benchmarks/peak_live_tensors.py --checkout . --shapes gpt2-small --rows 8
    git worktree add --detach /tmp/first e35a9f7
    python benchmarks/peak_live_tensors.py --checkout /tmp/first --shapes gpt2-small --rows 8
    python benchmarks/peak_live_tensors.py --checkout . --shapes demo --rows 64 \\
        --batch-size 32 --heads-per-pass 16
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    # benchmarks/benchmark.py --model gpt2-small-random
    "gpt2-small": dict(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024
    ),
    # config/demo.yaml's tiny-gpt2 (resources/models/tiny-gpt2/config.json)
    "demo": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=4096, n_ctx=128),
}
HERE = Path(__file__).resolve().parents[1]


def live_tensors_module():
    """selfrepair/live_tensors.py of this checkout, loaded by path (the checkout measured may
    be one without it, and its selfrepair package is the one imported)."""
    spec = importlib.util.spec_from_file_location(
        "live_tensors", HERE / "selfrepair/live_tensors.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def engine_of(checkout: Path):
    """measure_heads and random_model of the checkout's selfrepair (either layout)."""
    sys.path.insert(0, str(checkout))
    for engine, models in (
        ("selfrepair.engine.self_repair", "selfrepair.models.builders"),
        ("selfrepair.engine", "selfrepair.models"),
    ):
        try:
            e, m = importlib.import_module(engine), importlib.import_module(models)
            return e.measure_heads, m.random_model
        except (ImportError, AttributeError):
            continue
    raise SystemExit(f"no measure_heads found in {checkout}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkout", type=Path, default=HERE)
    p.add_argument("--shapes", choices=sorted(SHAPES), default="gpt2-small")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per row, BOS included")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--heads-per-pass", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--top", type=int, default=12, help="groups of allocations printed")
    args = p.parse_args(argv)

    lt = live_tensors_module()
    measure_heads, random_model = engine_of(args.checkout.resolve())
    import selfrepair

    commit = subprocess.run(
        ["git", "-C", str(args.checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    model = random_model("gpt2", **SHAPES[args.shapes])
    gen = torch.Generator().manual_seed(0)
    d_vocab = model.cfg.d_vocab
    tokens = torch.randint(1, d_vocab, (args.rows, args.seq_len), generator=gen)
    tokens[:, 0] = 0
    weights = lt.tensor_bytes(model.parameters())
    print(
        f"checkout {args.checkout} ({commit}, {selfrepair.__file__}); {args.shapes} random, "
        f"{args.rows} rows x {args.seq_len} tokens, batch_size {args.batch_size}, "
        f"heads_per_pass {args.heads_per_pass}; weights {weights / 2**20:.1f} MiB",
        flush=True,
    )
    kw = dict(batch_size=args.batch_size, heads_per_pass=args.heads_per_pass)
    for i in range(args.repeats):
        gc.collect()
        start = time.perf_counter()
        with lt.LiveTensors() as live:
            measure_heads(model, tokens, "resample", **kw)
        gc.collect()
        print(
            f"run {i + 1}: peak live tensors {live.peak:,} bytes ({live.peak / 2**20:.2f} MiB) "
            f"beyond the weights; {live.bytes:,} bytes still alive after; "
            f"{time.perf_counter() - start:.1f} s under the mode",
            flush=True,
        )
    print("alive at the peak (last run):")
    print("\n".join(lt.describe(live.at_peak, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
