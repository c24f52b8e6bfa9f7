"""A Pythia training revision from the hub, offline: tools/offline_hub.py writes refs/step1000
beside main (other seeded random weights), and the workflow's loader takes it through
TransformerLens' own checkpoint support (`from_pretrained(name, checkpoint_value=1000)`) with
HF_HUB_OFFLINE=1: that revision's weights, not main's, checked against transformers' own forward
pass of the revision's snapshot; the job records the revision's commit.

A 2-layer stand-in under the name pythia-160m (the real size takes minutes to write and load);
hub state is read when huggingface_hub is imported, so the loads run in a fresh interpreter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_offline_hub import DOCS, run_python

from selfrepair.data.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import offline_hub  # noqa: E402

REPO = "EleutherAI/pythia-160m"

COMPARE = """
import json, torch
from huggingface_hub import snapshot_download
from transformers import GPTNeoXForCausalLM
from selfrepair.models.loading import load_model
from selfrepair.stages.job import hub_revision
tokens = torch.tensor([[0, 5, 17, 99, 3, 250, 7, 8], [0, 44, 2, 9, 120, 11, 6, 1]])
centred = lambda x: x - x.mean(-1, keepdim=True)
def hf(revision):
    path = snapshot_download("EleutherAI/pythia-160m", revision=revision)
    model = GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return centred(model(tokens).logits)
main, rev = load_model("pythia-160m"), load_model("pythia-160m", revision="step1000")
with torch.no_grad():
    ours = {"main": centred(main(tokens)), "step1000": centred(rev(tokens))}
theirs = {"main": hf("main"), "step1000": hf("step1000")}
err = lambda a, b: (ours[a] - theirs[b]).abs().max().item()
print(json.dumps({
    "rev_vs_rev": err("step1000", "step1000"), "main_vs_main": err("main", "main"),
    "rev_vs_main": err("step1000", "main"), "n_layers": rev.cfg.n_layers,
    "commit": hub_revision("pythia-160m", "step1000"),
}))
"""


@pytest.mark.slow  # a fresh interpreter importing TransformerLens: about 20 s on 2 free cores
def test_a_pythia_revision_loads_offline_with_its_own_weights(tmp_path):
    hf_home = tmp_path / "hf"
    hub = hf_home / "hub"
    hub.mkdir(parents=True)
    files = tmp_path / "files"
    files.mkdir()
    tokenizer = train_tokenizer(DOCS, 300, tmp_path / "tok")
    tokenizer.save_pretrained(str(files))
    config = dict(
        offline_hub._PYTHIA,
        hidden_size=32,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=64,
        vocab_size=len(tokenizer),
    )
    (files / "config.json").write_text(json.dumps(config))
    offline_hub.weight_files(config, files, seed=3)
    main = offline_hub.write_snapshot(hub, REPO, "model", files)
    step1000 = offline_hub.write_revision(hub, REPO, config, "step1000", seed=4)
    assert main != step1000
    repo = hub / "models--EleutherAI--pythia-160m"
    assert (repo / "refs" / "step1000").read_text() == step1000
    assert (repo / "refs" / "main").read_text() == main  # main is kept beside the revision

    result = run_python(COMPARE, hf_home)
    assert result["n_layers"] == 2
    # Pythia's float16 weights (as on the hub) are loaded in float32 by both sides.
    assert result["rev_vs_rev"] < 1e-3 and result["main_vs_main"] < 1e-3, result
    assert result["rev_vs_main"] > 100 * result["rev_vs_rev"] + 1e-3, result  # other weights
    assert result["commit"] == step1000
