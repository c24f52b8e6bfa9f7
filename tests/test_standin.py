"""The TransformerLens-free stand-in (models.standin) read from a processed-weights file
(models.processed) computes every number bitwise as the HookedTransformer it was written from,
on tiny random models of the three families; a missing, damaged or stale file is refused in one
line naming the fix; and reading it imports no TransformerLens."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr

from selfrepair.engine.atp import measure_atp
from selfrepair.engine.clean import clean_direct_effects
from selfrepair.engine.self_repair import measure_heads
from selfrepair.mechanisms.norms import residual_norms
from selfrepair.models import kinds
from selfrepair.models.blocks import run_block, unsupported_reason
from selfrepair.models.builders import random_model
from selfrepair.models.processed import (
    MODEL_JSON,
    WEIGHTS_FILE,
    ProcessedWeightsError,
    read_processed,
    write_processed,
)

SOURCE = {"model": "random", "revision": "r1"}


@pytest.fixture(scope="module", params=["gpt2", "pythia", "llama"])
def pair(request, tmp_path_factory):
    """(HookedTransformer, its stand-in read back from the written file, the folder)."""
    model = random_model(request.param, n_layers=3, d_model=32, n_heads=4, d_vocab=53, n_ctx=24)
    folder = tmp_path_factory.mktemp(f"processed-{request.param}")
    write_processed(model, folder, SOURCE)
    return model, read_processed(folder, SOURCE), folder


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 53, (5, 17), generator=torch.Generator().manual_seed(1))


def assert_same_dataset(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_post_norm_architectures_are_transformer_lens_own():
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    assert kinds.POST_NORM_ARCHITECTURES == frozenset(POST_NORM_ARCHITECTURES)


def test_the_state_dict_and_fields_are_the_models(pair):
    model, standin, _ = pair
    theirs, ours = model.state_dict(), standin.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    for key in ("n_layers", "n_heads", "d_head", "attn_only", "parallel_attn_mlp", "n_ctx"):
        assert getattr(standin.cfg, key) == getattr(model.cfg, key)
    assert unsupported_reason(standin.blocks[0]) is None


def test_logits_are_bitwise_the_hooked_transformers(pair, tokens):
    model, standin, _ = pair
    with torch.no_grad():
        assert torch.equal(model(tokens), standin(tokens))


def test_unfused_blocks_and_hooks_are_bitwise(pair, tokens):
    """block(resid) with a hook replacing a norm's scale (fires thrice in ln1) and z, the MLP
    resumed as the ablation does, and the final norm and unembedding."""
    model, standin, _ = pair
    seen = {}

    def scale(x, hook):
        seen.setdefault(id(hook), []).append(hook.name)
        return x * 1.5

    def z(x, hook):
        return x.flip(0)

    fwd = [("blocks.1.ln1.hook_scale", scale), ("blocks.1.attn.hook_z", z)]
    outs = []
    for m in (model, standin):
        resid = m.W_E[tokens] * 0.5
        with torch.no_grad(), m.hooks(fwd_hooks=fwd):
            out = m.blocks[1](resid)
            if not m.cfg.attn_only:
                out = out + m.blocks[2].apply_mlp(m.blocks[2].ln2(out))
            outs.append((out, m.unembed(m.ln_final(out)), run_block(m.blocks[0], resid)))
    for theirs, ours in zip(*outs, strict=True):
        assert torch.equal(theirs, ours)
    names = [name for names in seen.values() for name in names]
    assert len(names) == 6 and set(names) == {"blocks.1.ln1.hook_scale"}


def test_the_folded_value_biases_travel_with_the_weights(pair):
    """zero-with-value-bias reads the b_V TransformerLens folded into b_O (models.value_bias),
    which is not in the state dict: the file carries it and the stand-in has it back."""
    from selfrepair.models.value_bias import folded_value_bias

    model, standin, _ = pair
    assert torch.equal(folded_value_bias(model), folded_value_bias(standin))


@pytest.mark.parametrize(
    ("ablation", "freeze_ln"),
    [("resample", False), ("mean", True), ("zero-with-value-bias", False)],
)
def test_engine_outputs_are_bitwise(pair, tokens, ablation, freeze_ln):
    model, standin, _ = pair
    got = [
        measure_heads(m, tokens, ablation, batch_size=2, freeze_ln=freeze_ln)
        for m in (model, standin)
    ]
    assert_same_dataset(*got)
    heads = [(1, 0), (2, 3)]
    assert_same_dataset(*(residual_norms(m, tokens, ablation, heads) for m in (model, standin)))


def test_clean_effects_are_bitwise(pair, tokens):
    model, standin, _ = pair
    assert_same_dataset(*(clean_direct_effects(m, tokens, top1=True) for m in (model, standin)))


def test_atp_is_bitwise(pair, tokens):
    model, standin, _ = pair
    top = np.zeros((3, 4, 5, 16), bool)
    top[:, :, :, ::3] = True
    got = [measure_atp(m, tokens, "resample", top=top, per_token=top) for m in (model, standin)]
    assert_same_dataset(*got)


def _corrupt(folder, name, edit):
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(edit(data))
    return data


@pytest.mark.parametrize(
    ("name", "edit", "says"),
    [
        (WEIGHTS_FILE, lambda d: d[:-1] + bytes([d[-1] ^ 1]), "damaged"),
        (WEIGHTS_FILE, lambda d: b"", "damaged"),
        (MODEL_JSON, lambda d: d[:10], "damaged"),
        (MODEL_JSON, lambda d: d.replace(b'"format": 1', b'"format": 0'), "another format"),
    ],
)
def test_a_damaged_file_is_one_line_naming_the_fix(pair, name, edit, says):
    _, _, folder = pair
    original = _corrupt(folder, name, edit)
    try:
        with pytest.raises(ProcessedWeightsError, match=says) as err:
            read_processed(folder, SOURCE)
    finally:
        (folder / name).write_bytes(original)
    assert "\n" not in str(err.value) and "process_weights" in str(err.value)


def test_missing_and_stale_files_are_refused(pair, tmp_path):
    _, _, folder = pair
    with pytest.raises(ProcessedWeightsError, match="missing.*process_weights"):
        read_processed(tmp_path / "nothing", SOURCE)
    with pytest.raises(ProcessedWeightsError, match="other weights.*process_weights"):
        read_processed(folder, {**SOURCE, "revision": "r2"})


def test_reading_it_and_running_the_engine_imports_no_transformer_lens(pair):
    _, _, folder = pair
    code = f"""
        import json, sys, torch
        from selfrepair.models.processed import read_processed
        from selfrepair.engine.self_repair import measure_heads
        from selfrepair.engine.clean import clean_direct_effects
        model = read_processed({str(folder)!r})
        tokens = torch.randint(0, 53, (3, 9), generator=torch.Generator().manual_seed(0))
        measure_heads(model, tokens, "resample")
        clean_direct_effects(model, tokens)
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("transformer_lens"))))
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_mechanisms_and_sets_are_bitwise(pair, tokens):
    """The passes of neuron_effects, self_reinforcement and set_ablate."""
    from selfrepair.engine.sets import measure_sets
    from selfrepair.mechanisms.neurons import neuron_direct_effects
    from selfrepair.mechanisms.probes import resolve_probes
    from selfrepair.mechanisms.reinforcement import self_reinforcement

    model, standin, _ = pair
    sets = {"a": [(1, 0), (1, 2)], "b": [(0, 1), (2, 3)]}
    got = [measure_sets(m, tokens, "resample", sets, batch_size=2) for m in (model, standin)]
    assert_same_dataset(*got)
    got = [self_reinforcement(m, tokens, [(1, 1), (2, 0)], batch_size=2) for m in (model, standin)]
    assert_same_dataset(*got)
    if not model.cfg.parallel_attn_mlp:  # a parallel block's MLP does not read its own heads
        got = [
            neuron_direct_effects(m, tokens, "mean", resolve_probes(m, [(1, 1)]), batch_size=2)
            for m in (model, standin)
        ]
        assert_same_dataset(*got)


def test_a_model_the_stand_in_cannot_run_is_loaded_through_transformer_lens(tmp_path):
    """process_weights writes only a model.json saying why; the job then calls model_for."""
    from selfrepair.models.processed import unsupported_reason
    from selfrepair.stages import job as job_module

    model = random_model("gpt2", n_layers=1)
    model.cfg.use_attn_result = True  # per-head results: the stand-in has none
    write_processed(model, tmp_path, SOURCE)
    assert not (tmp_path / WEIGHTS_FILE).exists()
    assert unsupported_reason(tmp_path, SOURCE) == "per-head attention results"
    with pytest.raises(ProcessedWeightsError, match="through TransformerLens"):
        read_processed(tmp_path, SOURCE)
    job = job_module.ModelJob(tokens="", entry={"name": "random"}, batch_size=1, weights=tmp_path)
    source = job_module.weights_source(job.entry, None)
    write_processed(model, tmp_path, source)
    loads = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(job_module, "model_for", lambda *a, **k: loads.append(a) or "loaded")
        assert job.model() == "loaded" and len(loads) == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_the_method_passes_and_induction_scores_are_bitwise(pair, tokens):
    """The passes of task_methods (engine.methods, engine.methods_grad: restarted passes,
    autograd) and task_clean's induction scores (attention patterns)."""
    from selfrepair.engine.induction import induction_scores
    from selfrepair.engine.methods import clean_residuals, measure_methods
    from selfrepair.engine.methods_grad import measure_gradient_methods

    model, standin, _ = pair
    scored = np.zeros((tokens.shape[0], tokens.shape[1] - 1), bool)
    scored[:, [5, 11]] = True
    scored[2, 15] = True
    members, candidates = [(0, 1), (1, 2)], [(0, 2), (1, 3), (2, 0)]  # below, at, above S
    runs = [
        (
            measure_methods(m, tokens, "resample", members, scored, candidates, batch_size=3),
            measure_gradient_methods(m, tokens, "mean", members, scored, steps=2),
        )
        for m in (model, standin)
    ]
    for got in zip(*runs, strict=True):
        assert_same_dataset(*got)
    for a, b in zip(*(clean_residuals(m, tokens) for m in (model, standin)), strict=True):
        assert torch.equal(a, b)
    rows = torch.cat([tokens[:, :6], tokens[:, 1:6]], 1).numpy()
    got = [induction_scores(m, rows, 5, batch_size=2) for m in (model, standin)]
    np.testing.assert_array_equal(*got)
