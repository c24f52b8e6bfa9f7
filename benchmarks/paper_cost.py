"""GPU-hours of the paper's full run, measured: times the engine (clean direct effects and one
ablation variant) on models with the paper models' architectures and random weights (the time
depends on the shapes, not on the weights, so nothing is downloaded), a few batches each, and
scales to every token, ablation variant and model of a config.

    python benchmarks/paper_cost.py [--config OVERLAY ...] [--rows 60] [--device cuda]

Prints per model: measured seconds per 1k tokens, the time of one shard job (which is what
`resources.runtime` of that model has to cover), and the total; then the sum in GPU-hours.

With --estimate MODEL --rates FILE it times nothing: it estimates a model too large to time here
(Llama-7B) from its matmul FLOPs (selfrepair/flops.py) at the FLOP rate the engine reached on
the models timed in FILE (an earlier output of this script), for the heads its config entry
measures:

    python benchmarks/paper_cost.py --config config/paper-llama.yaml --estimate llama-7b \
        --rates benchmarks/results/paper_cost_h100.txt
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
from selfrepair.catalogue import PAPER_MODELS  # noqa: E402
from selfrepair.engine.clean import clean_direct_effects  # noqa: E402
from selfrepair.engine.self_repair import measure_heads  # noqa: E402
from selfrepair.flops import Shapes, all_heads, engine_flops, unembed_flops  # noqa: E402
from selfrepair.models.builders import family_config, random_model  # noqa: E402

# What a random stand-in takes of a paper model's shapes (the rest: models.builders' defaults,
# d_head = d_model / n_heads and d_mlp = 4 d_model, as the paper's GPT-2 and Pythia models have).
BUILDER_DIMS = ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx")

# The paper's models timed here, as random stand-ins of their architectures (the catalogue's
# shapes), and those estimated from FLOPs (--estimate), not timed: Llama-7B.
TIMED = ("gpt2-small", "gpt2-medium", "pythia-160m", "pythia-410m", "pythia-1b")
ARCHITECTURES = {
    name: dict(family=PAPER_MODELS[name].family, **PAPER_MODELS[name].shapes.dims(*BUILDER_DIMS))
    for name in TIMED
}
ESTIMATED = {"llama-7b": PAPER_MODELS["llama-7b"].shapes}


def shapes_of(name: str) -> Shapes:
    """The Shapes of a model of ESTIMATED, or of ARCHITECTURES as measure() builds it."""
    if name in ESTIMATED:
        return ESTIMATED[name]
    arch = dict(ARCHITECTURES[name])
    return Shapes.of(family_config(arch.pop("family"), **arch))


def pass_flops(s: Shapes, seq_len: int, heads: dict[int, int] | None) -> tuple[float, float]:
    """Matmul FLOPs per predicted token of the clean_cache pass (the engine's clean pass and the
    full unembedding, for the loss) and of one ablate job (measure_heads: its own clean pass and
    the ablated passes of `heads`, {layer: heads ablated}; None: every head)."""
    n_pred = seq_len - 1
    heads = all_heads(s) if heads is None else heads
    clean = engine_flops(s, seq_len, {}) + unembed_flops(s, seq_len)
    return clean / n_pred, engine_flops(s, seq_len, heads) / n_pred


def read_timings(path: Path) -> dict[str, tuple[float, float]]:
    """Seconds per predicted token of the clean pass and of one ablation variant (every head), by
    model, from a file this script printed (its table rows)."""
    timings = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] in ARCHITECTURES and parts[1].endswith("M"):
            timings[parts[0]] = (float(parts[2]) * 1e-6, float(parts[3]) * 1e-3)
    if not timings:
        raise SystemExit(f"{path} holds no timing rows of this script's table")
    return timings


def measured_rates(timings: dict[str, tuple[float, float]], seq_len: int) -> dict[str, tuple]:
    """FLOP/s the clean pass and the engine reached per timed model: pass_flops over time."""
    rates = {}
    for name, (clean_s, ablate_s) in timings.items():
        clean, ablate = pass_flops(shapes_of(name), seq_len, None)
        rates[name] = (clean / clean_s, ablate / ablate_s)
    return rates


def estimate(
    shapes: Shapes,
    seq_len: int,
    n_pred: int,
    heads: dict[int, int],
    variants: int,
    rate: tuple[float, float],
) -> dict[str, float]:
    """GPU seconds of a model's run at the FLOP rates `rate` (clean pass, engine), by part: the
    clean_cache pass, the ablate jobs (one per variant, each with its own clean pass), and the
    two mechanism passes that rerun the engine on the same heads (neuron_effects,
    repair_detail)."""
    clean, ablate = pass_flops(shapes, seq_len, heads)
    per_variant = n_pred * ablate / rate[1]
    return {
        "clean_cache": n_pred * clean / rate[0],
        "ablate": variants * per_variant,
        "mechanisms": 2 * per_variant,
    }


def print_estimate(config: dict, name: str, rates_file: Path) -> None:
    """--estimate: the model's GPU time at the rate of each model timed in rates_file, largest
    timed model (closest in shapes) first."""
    data, engine = config["data"], config["engine"]
    variants = len(config["ablations"]) + len(engine["frozen_ln"])
    n_pred = sr_config.n_rows(data) * (data["seq_len"] - 1)
    entry = sr_config.model_entries(config)[name]
    heads: dict[int, int] = {}
    for layer, _ in entry.get("heads") or []:
        heads[layer] = heads.get(layer, 0) + 1
    shapes = shapes_of(name)
    rates = measured_rates(read_timings(rates_file), data["seq_len"])
    clean, ablate = pass_flops(shapes, data["seq_len"], heads or None)
    print(
        f"ESTIMATE (not measured) of {name}: {clean / 1e9:.1f} GFLOP per token for the "
        f"clean_cache pass, {ablate / 1e9:.1f} per token for one ablate job "
        f"({', '.join(f'L{h[0]}H{h[1]}' for h in entry.get('heads') or []) or 'every head'}); "
        f"{n_pred} predictions, {variants} ablation variants; rates measured in {rates_file}"
    )
    print(f"{'at the rate of':<14} {'TFLOP/s clean/engine':>20}  clean  ablate  mechanisms  GPU-h")
    heads = heads or all_heads(shapes)
    for timed in sorted(rates, key=lambda m: -shapes_of(m).n_layers * shapes_of(m).d_model ** 2):
        parts = estimate(shapes, data["seq_len"], n_pred, heads, variants, rates[timed])
        minutes = {k: v / 60 for k, v in parts.items()}
        print(
            f"{timed:<14} {rates[timed][0] / 1e12:>11.1f} / {rates[timed][1] / 1e12:>6.1f} "
            f"{minutes['clean_cache']:>5.1f}m {minutes['ablate']:>6.1f}m "
            f"{minutes['mechanisms']:>10.1f}m {sum(parts.values()) / 3600:>6.2f}"
        )


def merged(base: dict, extra: dict) -> dict:
    """Snakemake's --configfile merge: mappings key by key, everything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def load_config(paths: list[Path]) -> dict:
    """The config as the workflow sees it: config/config.yaml with each file merged in as
    `snakemake --configfile` merges it, schema defaults filled in where Snakemake is installed
    (on a bare GPU machine the keys used here must be in the files themselves)."""
    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for path in paths:
        config = merged(config, yaml.safe_load(path.read_text()))
    try:
        from snakemake.utils import validate
    except ImportError:
        return config
    validate(config, str(root / "workflow/schemas/config.schema.yaml"))
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
    parser.add_argument(
        "--config",
        type=Path,
        nargs="*",
        default=[],
        help="overlays merged onto config/config.yaml, as snakemake --configfile merges them",
    )
    parser.add_argument("--rows", type=int, default=60, help="rows timed per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="*", help="default: the config's models")
    parser.add_argument("--estimate", choices=list(ESTIMATED), help="estimate, do not time")
    parser.add_argument("--rates", type=Path, help="--estimate: a file this script printed")
    args = parser.parse_args()

    config = load_config(args.config)
    if args.estimate:
        if args.rates is None:
            parser.error("--estimate needs --rates")
        print_estimate(config, args.estimate, args.rates)
        return
    data, engine = config["data"], config["engine"]
    variants = len(config["ablations"]) + len(engine["frozen_ln"])
    shards = sr_config.n_shards(data)
    shard_pred = data["shard_rows"] * (data["seq_len"] - 1)
    total_pred = sr_config.n_rows(data) * (data["seq_len"] - 1)
    names = args.models or [e["name"] for e in sr_config.model_entries(config).values()]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device {device_name}, torch {torch.__version__}, dtype float32; {args.rows} rows of "
        f"{data['seq_len']} tokens timed per model; config "
        f"{' + '.join(['config/config.yaml', *map(str, args.config)])}: {total_pred} "
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
