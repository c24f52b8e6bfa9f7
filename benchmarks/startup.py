"""A job's start-up: seconds a fresh interpreter takes to import a rule script's modules (its
stage function's), as Snakemake starts each job, and which heavy modules they bring in.

    python benchmarks/startup.py [SCRIPT ...] [--repeats N] [--tokenizer FOLDER]

SCRIPT is a name in workflow/scripts/ without .py (default: ablate, share_tokens, fig01...,
summarize_heads). Each repeat runs every script once, one after the other, so that scripts
timed in one run see the same load; the best of the repeats is printed. --tokenizer also times
loading a tokenizer folder as the tokenizing rules do (data.tokens.load_tokenizer), imports
included: the run-time cost of tokenize, task_prompts and the explorers.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"
DEFAULT = ("ablate", "share_tokens", "fig01_self_repair_per_head", "summarize_heads")
HEAVY = ("transformer_lens", "transformers", "torch", "datasets", "pandas", "matplotlib")


def script_imports(name: str) -> str:
    """The import statements at the top of workflow/scripts/<name>.py."""
    tree = ast.parse((SCRIPTS / f"{name}.py").read_text())
    return "\n".join(
        ast.unparse(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
    )


def tokenizer_code(folder: str) -> str:
    """Loading a tokenizer folder as the tokenizing rules do, and encoding one text."""
    return (
        "from selfrepair.data.tokens import load_tokenizer\n"
        f"tok, _ = load_tokenizer({{'name': 'model'}}, {folder!r})\n"
        "tok('def f(x):', add_special_tokens=False)"
    )


def time_imports(code: str) -> dict:
    """Seconds from a fresh interpreter's start to `code` done, and the heavy modules loaded."""
    probe = (
        "import os, time\n"
        "ticks = float(open(f'/proc/{os.getpid()}/stat').read().split()[21])\n"
        "boot = time.time() - float(open('/proc/uptime').read().split()[0])\n"
        "start = boot + ticks / os.sysconf('SC_CLK_TCK')\n"
        f"{code}\n"
        "import json, sys\n"
        f"print(json.dumps({{'s': time.time() - start, "
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", default=list(DEFAULT))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokenizer", help="a tokenizer folder to time load_tokenizer on")
    args = parser.parse_args(argv)
    codes = {name: script_imports(name) for name in args.scripts}
    if args.tokenizer:
        codes["load_tokenizer"] = tokenizer_code(args.tokenizer)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, code in codes.items():
            got = time_imports(code)
            if name not in best or got["s"] < best[name]["s"]:
                best[name] = got
    print(f"| script | import s (best of {args.repeats}) | heavy modules |")
    print("|---|---|---|")
    for name, got in best.items():
        print(f"| {name} | {got['s']:.2f} | {', '.join(got['heavy']) or '-'} |")


if __name__ == "__main__":
    main()
