"""Bytes on disk of what one planned job writes (selfrepair.config.storage adds them up over the
planned jobs): every file and folder rounded up to whole blocks of the disk, a Zarr store counted
as the files write_zarr makes (metadata files, a folder per array, its chunk files), the trained
tokenizers and models under resources/, and each job's log, benchmark and Snakemake's record of
its outputs. Upper bounds, never estimates from below: a finished reduced-demo run takes less
(tests/test_disk_usage.py measures it)."""

from __future__ import annotations

import os
from pathlib import Path

from selfrepair.catalogue import Shapes

__all__ = ["BLOCK", "block_size", "log_bytes", "model_dir_bytes", "on_disk", "store_disk_bytes"]
__all__ += ["STORE_ARRAYS", "tokenizer_dir_bytes"]

BLOCK = 4096  # when the disk does not say (os.statvfs)
# Zarr guesses chunks of at least 3/4 of its 128 KiB minimum target unless the array is smaller
# (zarr.core.chunk_grids._guess_chunks): an unchunked array of b bytes is at most b / 64 KiB + 1
# chunk files.
MIN_GUESSED_CHUNK = 64 * 1024
CHUNK_OVERHEAD = 64  # per chunk file: Blosc's header (16 bytes) and the CRC32C (4), with room
# A store's root .zattrs (provenance, config; 2.8-5.7 KB measured) and its copy in .zmetadata;
# per file its checksum or digest there (66 bytes measured), twice; per array its .zarray and
# .zattrs (0.4 KB) and their copy; per file its entry in its folder (ext4: 8 + name bytes).
ROOT_ATTRS = 16 * 1024
RECORD_BYTES = 2 * 128
ARRAY_META = 2 * 1024
DIRENT = 64
# Per store a job writes (rule, output name): (arrays, coordinates included, at most; the
# dimension write_zarr chunks by, which multiplies each array's chunk files: "layer" by the
# model's layers, "row" by its shards, "head" by the heads shown times the two selections).
# Measured in the reduced demo under engine.store_tokens top and all, with room
# (tests/test_disk_usage.py checks every store of a finished run against it).
STORE_ARRAYS = {
    ("tokenize", "tokens"): (2, "row"),
    ("share_tokens", "tokens"): (2, "row"),
    ("clean_cache", "clean"): (24, None),
    ("ablate", "heads"): (64, "layer"),  # top: a head's top tokens, sums, candidates
    ("ablate", "heads", "all"): (20, "layer"),  # every token (checkpoints.keeps_every_token)
    ("ablate", "attribution"): (32, None),
    ("checkpoint_ablate", "heads"): (20, "layer"),  # a checkpoint keeps every token
    ("checkpoint_ablate", "attribution"): (32, None),
    ("atp", "atp"): (20, None),
    ("atp_summary", "summary"): (72, None),
    ("head_top_tokens", "top_tokens"): (3, None),
    ("repair_summary", "summary"): (32, None),
    ("repair_detail", "detail"): (20, None),
    ("summarize_heads", "summary"): (32, None),
    ("summarize_heads", "intervals"): (12, None),
    ("neuron_effects", "selected"): (32, "head"),
    ("neuron_effects", "reductions"): (24, None),
    ("norm_ratios", "norms"): (20, None),
    ("self_reinforcement", "reinforcement"): (20, None),
    ("task_prompts", "prompts"): (12, None),
    ("task_clean", "clean"): (20, None),
    ("task_ablate", "heads"): (20, "layer"),
    ("task_ablate", "attribution"): (32, None),
    ("task_ablate", "detail"): (20, None),
    ("task_set_ablate", "sets"): (20, None),
    ("set_ablate", "sets"): (20, None),
    ("task_summary", "summary"): (32, None),
    ("task_summary", "intervals"): (12, None),
    ("task_summary", "repairs"): (32, None),
    ("task_atp", "atp"): (24, None),
    ("task_atp_per_kind", "atp"): (24, None),
    ("task_atp_summary", "summary"): (72, None),
    ("task_methods", "methods"): (14, None),  # 9 variables, 5 coordinates
}
OTHER_STORE = (72, "layer")  # a store not listed: as many arrays as the largest, chunked
# A job's log: its messages (0.1-5 KB in the demo), and a progress bar line every 5 s at most
# (engine: tqdm's mininterval) for as long as its runtime resource allows.
LOG_BYTES = 16 * 1024
LOG_BYTES_PER_MINUTE = 2 * 1024
BENCHMARK_BYTES = 1024  # one line of Snakemake's benchmark table
SNAKEMAKE_RECORD = 4096  # .snakemake/metadata per output (2.9 KB measured) with its inputs'
SNAKEMAKE_LOG_LINE = 2048  # per job in .snakemake/log (about 1 KB measured)


def block_size(folder: str | os.PathLike) -> int:
    """The disk's allocation unit for a folder (f_frsize, else f_bsize; BLOCK if it says 0)."""
    stat = os.statvfs(folder)
    return stat.f_frsize or stat.f_bsize or BLOCK


def on_disk(n_bytes: int, block: int = BLOCK) -> int:
    """A file of n_bytes in whole blocks (an empty file: none, its folder entry aside)."""
    return -(-n_bytes // block) * block


def store_disk_bytes(
    data_bytes: int, arrays: int, chunks_per_array: int = 1, block: int = BLOCK
) -> int:
    """At most what a store of `arrays` arrays holding data_bytes (uncompressed) takes on disk:
    .zgroup, .zattrs, .zmetadata, Snakemake's .snakemake_timestamp, per array a folder, its
    .zarray and .zattrs and its chunk files (chunks_per_array each, more for large unchunked
    arrays), each file rounded up to a block, plus the data and its metadata text."""
    chunks = arrays * chunks_per_array + data_bytes // MIN_GUESSED_CHUNK
    files = 4 + 2 * arrays + chunks
    folders = 1 + arrays
    text = 2 * ROOT_ATTRS + RECORD_BYTES * files + ARRAY_META * arrays + DIRENT * files
    return (files + folders) * block + data_bytes + CHUNK_OVERHEAD * chunks + text


def tokenizer_bytes(vocab_size: int) -> int:
    """tokenizer.json: every token with its number and every merge (21 KB for 512 measured)."""
    return 64 * vocab_size + 16 * 1024


def tokenizer_dir_bytes(vocab_size: int, block: int = BLOCK) -> int:
    """resources/tokenizers/<name>: its folder, tokenizer.json, tokenizer_config.json and
    Snakemake's .snakemake_timestamp."""
    return 2 * block + on_disk(tokenizer_bytes(vocab_size), block) + DIRENT * 3


def weights_bytes(size: Shapes) -> int:
    """model.safetensors in float32: the parameters, every block's biases and LayerNorms, the
    final LayerNorm, and the header naming each tensor."""
    d = size.d_model
    biases = size.n_layers * (10 * d + size.d_mlp) + 8 * d
    return 4 * (size.parameters() + biases) + 256 * (32 * size.n_layers + 16)


def model_dir_bytes(size: Shapes, n_kept: int, block: int = BLOCK) -> int:
    """resources/models/<name> of a trained model: the final weights and, under checkpoints/,
    each kept step's, each with config.json, generation_config.json and the tokenizer's two
    files; training.json and Snakemake's .snakemake_timestamp; every folder."""
    one = on_disk(weights_bytes(size), block) + on_disk(tokenizer_bytes(size.d_vocab), block)
    one += 3 * block + DIRENT * 5  # config.json, generation_config.json, tokenizer_config.json
    folders = 2 + n_kept  # the model's, checkpoints/, a step's each
    return (1 + n_kept) * (one + block) + folders * block + 2 * block


def log_bytes(
    n_logs: int, n_benchmarks: int, n_outputs: int, runtime: int = 0, block: int = BLOCK
) -> int:
    """A job's log files (for `runtime` minutes), benchmark tables, Snakemake's record of each
    output and its lines in Snakemake's own log."""
    log = on_disk(LOG_BYTES + LOG_BYTES_PER_MINUTE * runtime, block)
    logs = n_logs * log + n_benchmarks * on_disk(BENCHMARK_BYTES, block)
    records = n_outputs * on_disk(SNAKEMAKE_RECORD, block)
    return logs + records + SNAKEMAKE_LOG_LINE + DIRENT * (n_logs + n_benchmarks + n_outputs)


def chunk_multiplier(chunked: str | None, n_layers: int, n_shards: int, n_shown: int) -> int:
    """Chunk files per array of a store write_zarr chunks along `chunked`."""
    if chunked == "layer":
        return max(n_layers, 1)
    if chunked == "row":
        return max(n_shards, 1)
    if chunked == "head":
        return max(n_shown, 1) * 2  # and selection: 1, of two selections
    return 1


def folders_bytes(paths: list[str], existing: set[str] | None = None, block: int = BLOCK) -> int:
    """A block per folder the paths lie in (every ancestor but the working directory), once."""
    folders = {str(parent) for p in paths for parent in Path(p).parents if str(parent) != "."}
    return len(folders - (existing or set())) * block
