"""GPU-hours of the paper's full run, measured: times the engine (clean direct effects and one
ablation variant) on models with the paper models' architectures and random weights (the time
depends on the shapes, not on the weights, so nothing is downloaded), a few batches each, and
scales to every token, ablation variant and model of a config.

    python benchmarks/paper_cost.py [--config config/config.yaml] [--rows 60] [--device cuda]

Prints per model: measured seconds per 1k tokens, the time of one shard job (which is what
`resources.runtime` of that model has to cover), and the total; then the sum in GPU-hours.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import selfrepair.config as sr_config  # noqa: E402
from selfrepair.engine.clean import clean_direct_effects  # noqa: E402
from selfrepair.engine.self_repair import measure_heads  # noqa: E402
from selfrepair.models.builders import random_model  # noqa: E402

# The architectures of the paper's models (their Hugging Face configs), for random stand-ins.
ARCHITECTURES = {
    "gpt2-small": dict(
        family="gpt2", n_layers=12, d_model=768, n_heads=12, d_vocab=50257, n_ctx=1024
    ),
    "gpt2-medium": dict(
        family="gpt2", n_layers=24, d_model=1024, n_heads=16, d_vocab=50257, n_ctx=1024
    ),
    "pythia-160m": dict(
        family="pythia", n_layers=12, d_model=768, n_heads=12, d_vocab=50304, n_ctx=2048
    ),
    "pythia-410m": dict(
        family="pythia", n_layers=24, d_model=1024, n_heads=16, d_vocab=50304, n_ctx=2048
    ),
    "pythia-1b": dict(
        family="pythia", n_layers=16, d_model=2048, n_heads=8, d_vocab=50304, n_ctx=2048
    ),
}


def load_config(path: Path) -> dict:
    """The config as the workflow sees it: schema defaults filled in where Snakemake is
    installed (on a bare GPU machine the keys used here must be in the file itself)."""
    config = yaml.safe_load(path.read_text())
    try:
        from snakemake.utils import validate
    except ImportError:
        return config
    schema = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
    validate(config, str(schema))
    return config


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(name: str, rows: int, seq_len: int, batch_size: int, heads_per_pass: int, device: str):
    """Seconds per predicted token of the clean pass and of one ablation variant."""
    arch = dict(ARCHITECTURES[name])
    family = arch.pop("family")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the previous model's memory
    model = random_model(family, **arch).to(device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, arch["d_vocab"], (rows, seq_len), generator=gen)
    tokens[:, 0] = 0
    kw = dict(batch_size=batch_size)
    # Warm-up on two rows (CUDA context, kernels chosen, allocator grown), then the timed runs.
    measure_heads(model, tokens[:2], "resample", heads_per_pass=heads_per_pass, **kw)
    clean_s = timed(lambda: clean_direct_effects(model, tokens, **kw), device)
    ablate_s = timed(
        lambda: measure_heads(model, tokens, "resample", heads_per_pass=heads_per_pass, **kw),
        device,
    )
    n_params = sum(p.numel() for p in model.parameters())
    n_pred = rows * (seq_len - 1)
    return n_params, clean_s / n_pred, ablate_s / n_pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--rows", type=int, default=60, help="rows timed per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="*", help="default: the config's models")
    args = parser.parse_args()

    config = load_config(args.config)
    data, engine = config["data"], config["engine"]
    variants = len(config["ablations"]) + len(engine["frozen_ln"])
    shards = sr_config.n_shards(data)
    shard_pred = data["shard_rows"] * (data["seq_len"] - 1)
    total_pred = sr_config.n_rows(data) * (data["seq_len"] - 1)
    names = args.models or [e["name"] for e in sr_config.model_entries(config).values()]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device {device_name}, torch {torch.__version__}, dtype float32; {args.rows} rows of "
        f"{data['seq_len']} tokens timed per model; config {args.config}: {total_pred} "
        f"predictions per model in {shards} shards, {variants} ablation variants"
    )
    header = (
        f"{'model':<12} {'params':>7} {'clean ms/1k':>11} {'ablate s/1k':>11} "
        f"{'shard job min':>13} {'GPU-h':>7}"
    )
    print(header)
    total_h = 0.0
    for name in names:
        if name not in ARCHITECTURES:
            print(f"{name:<12} (architecture not known to this script: skipped)")
            continue
        n_params, clean_s, ablate_s = measure(
            name,
            args.rows,
            data["seq_len"],
            engine["batch_size"],
            engine["heads_per_pass"],
            args.device,
        )
        hours = (clean_s + variants * ablate_s) * total_pred / 3600
        total_h += hours
        print(
            f"{name:<12} {n_params / 1e6:>6.0f}M {1e6 * clean_s:>11.1f} {1e3 * ablate_s:>11.2f} "
            f"{ablate_s * shard_pred / 60:>13.1f} {hours:>7.2f}"
        )
    print(f"total: {total_h:.1f} GPU-hours (clean pass + {variants} variants, every head)")


if __name__ == "__main__":
    main()
