"""Check a prompts file against a model's tokenizer before a run:

    python -m selfrepair.tasks check FILE --model NAME [--configfile A.yaml B.yaml ...]

The config files merge as Snakemake merges them (config/config.yaml first, then each given one,
mappings key by key); the model is one of their `models`. Every line is checked as the
workflow's task_prompts job checks it (fields, one-token answers, corrupted prompts of the
prompt's length in tokens, prompts within the model's context) and every bad line printed with
its tokens. Exit status 0 when every line is good, 1 otherwise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["check_file", "main"]

DEFAULT_CONFIG = "config/config.yaml"


def _config(files: list[str]) -> dict[str, Any]:
    from selfrepair.config import merged_config

    config: dict[str, Any] = {}
    for name in [DEFAULT_CONFIG, *files]:
        path = Path(name)
        if not path.is_file():
            if name == DEFAULT_CONFIG and files:
                continue
            raise SystemExit(f"config file {name} does not exist (run from the project folder)")
        config = merged_config(config, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return config


def check_file(path: str, model: str, configfiles: list[str]) -> str:
    """The report of a prompts file checked with a model's tokenizer (SystemExit on a bad file,
    naming every bad line, or on a tokenizer that does not exist yet).

    Args:
        path: the JSONL prompts file.
        model: a model's name among the config's `models`.
        configfiles: the run's config files, in order.
    """
    from selfrepair.config import ConfigError, validate_run
    from selfrepair.config.tasks import model_context, task_tokenizer_dir
    from selfrepair.data.tokens import load_tokenizer, special_ids
    from selfrepair.tasks.jsonl import file_prompts, read_prompt_lines
    from selfrepair.tasks.prompts import TaskError

    config = _config(configfiles)
    config["tasks"] = {}  # the file is checked here, not the config's tasks
    try:
        entries = validate_run(config)
    except ConfigError as err:
        raise SystemExit(str(err)) from None
    if model not in entries:
        raise SystemExit(f"--model {model}: not among the config's models ({', '.join(entries)})")
    entry = entries[model]
    folder = task_tokenizer_dir(entry, config.get("tokenizers") or {})
    if "train" in entry and folder is None:
        raise SystemExit(
            f"{model}'s tokenizer resources/tokenizers/{entry['train']['tokenizer']} does not "
            "exist yet: the workflow trains it first (snakemake --cores 1 "
            f"resources/tokenizers/{entry['train']['tokenizer']} --configfile ...), then check"
        )
    tokenizer, source = load_tokenizer(entry, folder)
    n_ctx = model_context(config, entry)
    try:
        prompts = file_prompts(tokenizer, read_prompt_lines(path), special_ids(tokenizer)[0], n_ctx)
    except TaskError as err:
        raise SystemExit(f"{err}\n(tokenizer: {source})") from None
    return (
        f"{path}: {len(prompts.text)} prompts, every line good for {model} (tokenizer {source}); "
        f"longest row {int(prompts.length.max())} tokens, context {n_ctx or 'unknown'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selfrepair.tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a prompts file against a model's tokenizer")
    check.add_argument("file", help="the JSONL prompts file")
    check.add_argument("--model", required=True, help="a model's name in the config")
    check.add_argument("--configfile", nargs="*", default=[], help="the run's config files")
    args = parser.parse_args(argv)
    print(check_file(args.file, args.model, args.configfile))


if __name__ == "__main__":
    main(sys.argv[1:])
