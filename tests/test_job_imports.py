"""Jobs that need no model import neither TransformerLens nor torch: each costs seconds per job
(TransformerLens 3.9 imports transformers, torch.distributed, datasets and pandas), and most of
the demo's jobs are small. Checked in fresh interpreters, as Snakemake starts each job's script."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import ROOT, rule_script, rule_texts

# The rules whose jobs load a model (or build and train one): they need TransformerLens, or the
# stand-in read from the model's processed weights (STANDIN_RULES).
MODEL_RULES = {
    "train_model",
    "process_weights",
    "clean_cache",
    "ablate",
    "checkpoint_ablate",
    "atp",
    "repair_detail",
    "neuron_effects",
    "norm_ratios",
    "self_reinforcement",
    "task_ablate",
    "task_set_ablate",
    "set_ablate",
    "task_methods",
    "task_atp",
    "task_atp_per_kind",
}
HEAVY = ("transformer_lens", "torch")
# The model rules that still load the model through TransformerLens: training and processing the
# weights.
TRANSFORMER_LENS_RULES = {"train_model", "process_weights"}
STANDIN_RULES = MODEL_RULES - TRANSFORMER_LENS_RULES

_spec = importlib.util.spec_from_file_location("startup", ROOT / "benchmarks" / "startup.py")
startup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(startup)


def _script_imports(rule: str) -> str:
    """The import statements at the top of a rule's script (benchmarks/startup.py times them)."""
    return startup.script_imports(Path(rule_script(rule)).stem)


def _run(code: str) -> dict:
    """What a fresh interpreter running `code` prints as JSON on its last line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_model_rules_are_rules():
    assert MODEL_RULES <= set(rule_texts())


def test_a_rule_without_a_model_imports_neither_transformer_lens_nor_torch():
    """Each script's imports, one rule after the other in one interpreter: the first rule whose
    imports bring in a heavy module is named."""
    rules = sorted(set(rule_texts()) - MODEL_RULES)
    steps = {rule: _script_imports(rule) for rule in rules}
    found = _run(
        f"""
        import json, sys
        steps = {steps!r}
        for rule, code in steps.items():
            exec(code, {{}})
            heavy = [m for m in {HEAVY!r} if m in sys.modules]
            if heavy:
                print(json.dumps({{"rule": rule, "heavy": heavy}}))
                break
        else:
            print(json.dumps({{}}))
        """
    )
    assert not found, f"rule {found['rule']}'s script imports {', '.join(found['heavy'])}"


def test_the_model_rules_read_the_processed_weights():
    """Every model rule but those that keep TransformerLens takes the model's processed weights
    (model_job_input), so that its job runs the stand-in."""
    texts = rule_texts()
    reads = {rule for rule in MODEL_RULES if "unpack(model_job_input)" in texts[rule]}
    reads |= {
        rule
        for rule in MODEL_RULES
        if (base := re.search(rf"use rule (\w+) as {rule} with:", texts[rule]))
        and "unpack(model_job_input)" in texts[base.group(1)]
        and "input:" not in texts[rule]
    }
    assert reads == STANDIN_RULES


def test_a_model_rule_on_the_stand_in_imports_no_transformer_lens(tmp_path):
    """Each stand-in rule's script imports, then its job's model read from processed weights and
    run through the engine (the ablation, the method comparison's passes, the induction scores),
    in one fresh interpreter: no TransformerLens (torch, yes)."""
    from selfrepair.models.builders import random_model
    from selfrepair.models.processed import write_processed
    from selfrepair.stages.job import weights_source

    entry = {"name": "random-tiny"}
    write_processed(random_model("gpt2"), tmp_path / "w", weights_source(entry, None))
    steps = {rule: _script_imports(rule) for rule in sorted(STANDIN_RULES)}
    found = _run(
        f"""
        import json, sys, torch
        for code in {steps!r}.values():
            exec(code, {{}})
        from selfrepair.engine.self_repair import measure_heads
        from selfrepair.stages.job import ModelJob
        job = ModelJob(tokens="", entry={entry!r}, batch_size=2, weights={str(tmp_path / "w")!r})
        model = job.model(seq_len=9)
        rows = torch.randint(0, 97, (3, 9))
        measure_heads(model, rows, "resample")
        # task_methods' passes and task_clean's induction scores
        from selfrepair.engine.induction import induction_scores
        from selfrepair.engine.methods import measure_methods
        from selfrepair.engine.methods_grad import measure_gradient_methods
        scored = torch.zeros(3, 8, dtype=torch.bool)
        scored[:, -1] = True
        measure_methods(model, rows, "resample", [(0, 0)], scored, [(0, 1)])
        measure_gradient_methods(model, rows, "resample", [(0, 0)], scored, steps=1)
        induction_scores(model, rows.numpy(), 4, 2)
        print(json.dumps({{"tl": [m for m in sys.modules if m.startswith("transformer_lens")],
                           "kind": type(model).__name__}}))
        """
    )
    assert found == {"tl": [], "kind": "StandIn"}


def test_share_tokens_records_provenance_without_transformer_lens_or_torch(tmp_path):
    """share_tokens copies a model's tokens under a training checkpoint's key with the
    checkpoint's provenance: a local checkpoint's weights digest and a hub revision's commit,
    neither of which needs the model loaded."""
    weights = tmp_path / "tiny" / "checkpoints" / "step50"
    weights.mkdir(parents=True)
    (weights / "model.safetensors").write_bytes(b"weights")
    local = {"name": "tiny@step50", "checkpoint": {"model": "tiny", "step": 50,
                                                   "subdir": "checkpoints/step50"}}  # fmt: skip
    hub = {"name": "pythia-160m@step1000", "checkpoint": {"model": "pythia-160m", "step": 1000,
                                                          "revision": "step1000"}}  # fmt: skip
    found = _run(
        f"""
        import json, sys
        import numpy as np, xarray as xr
        from selfrepair.stages.data import share_tokens
        from selfrepair.stages.store import write_zarr

        tokens = xr.Dataset({{"tokens": (("row", "pos"), np.arange(12, dtype=np.int32).reshape(3, 4))}})
        write_zarr(tokens, {str(tmp_path / "tokens.zarr")!r})
        attrs = {{}}
        for key, entry, model_dir in (("local", {local!r}, {str(tmp_path / "tiny")!r}),
                                      ("hub", {hub!r}, None)):
            out = {str(tmp_path)!r} + f"/{{key}}.zarr"
            attrs[key] = share_tokens(tokens={str(tmp_path / "tokens.zarr")!r}, out=out,
                                      entry=entry, shard_rows=2,
                                      attrs={{"model": entry["name"]}}, model_dir=model_dir)
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps({{"heavy": heavy, "attrs": attrs}}, default=str))
        """
    )
    assert found["heavy"] == [], f"share_tokens imported {', '.join(found['heavy'])}"
    local_attrs, hub_attrs = found["attrs"]["local"], found["attrs"]["hub"]
    assert local_attrs["model_revision"].startswith("sha256:")
    assert local_attrs["checkpoint_of"] == "tiny" and local_attrs["checkpoint_step"] == 50
    assert hub_attrs["checkpoint_revision"] == "step1000" and hub_attrs["checkpoint_step"] == 1000
    assert local_attrs["tokens_of"].endswith("tokens.zarr")


def test_the_startup_benchmark_times_a_script_in_a_fresh_interpreter():
    got = startup.time_imports(startup.script_imports("share_tokens"))
    assert got["s"] > 0 and "torch" not in got["heavy"]


def test_tokenize_reads_a_trained_tokenizer_without_transformers_or_torch(tmp_path):
    """The tokenizing rules (tokenize, task_prompts, the explorers) read the demo's trained
    tokenizer folders with the `tokenizers` library alone (data.tokenizer_file): no torch, no
    transformers, and the rows AutoTokenizer packs."""
    import numpy as np
    from transformers import AutoTokenizer

    import selfrepair.data.sources as sc
    from selfrepair.data.tokenizer import train_tokenizer
    from selfrepair.data.tokens import pack_rows

    docs = [d for _, d in zip(range(30), sc.python_stdlib_documents("train"), strict=False)]
    folder = tmp_path / "tokenizer"
    train_tokenizer(docs, 300, folder)
    texts = tmp_path / "docs.jsonl"
    texts.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    corpus = {"source": "text_files", "files": [str(texts)]}
    out = tmp_path / "tokens.zarr"
    found = _run(
        f"""
        import json, sys
        from selfrepair.stages.data import tokenize, open_tokens
        tokenize({str(out)!r}, {corpus!r}, {{"name": "tiny", "path": {str(folder)!r}}}, 16, 20, 5)
        rows, _ = open_tokens({str(out)!r})
        heavy = [m for m in {(*HEAVY, "transformers")!r} if m in sys.modules]
        print(json.dumps({{"heavy": heavy, "rows": rows.tolist()}}))
        """
    )
    assert found["heavy"] == [], f"tokenize imported {', '.join(found['heavy'])}"
    auto = AutoTokenizer.from_pretrained(str(folder))
    expect = pack_rows(sc.documents(corpus), auto, 16, 20, 0, 0)
    np.testing.assert_array_equal(np.asarray(found["rows"]), expect)
