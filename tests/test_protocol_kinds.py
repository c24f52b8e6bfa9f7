"""The two ablations of CoAx's and Wang et al.'s protocols (selfrepair.ablations):
zero-with-value-bias (the whole slice entering the attention output projection zero, b_V
included, as CoAx's register_head_ablation zeroes it) against Hugging Face's own forward pass with
that slice zeroed, and the value biases every loader keeps against the ones Hugging Face's
weights hold; template-mean (Wang et al.'s mean over the corrupted prompts of each template, per
position) against one full forward pass per head with the mean computed row by row, with several
template groups, and the groups of IOI's prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tasks_helpers import padded_task
from test_architectures import hf_checkpoint

from selfrepair.engine.inputs import TaskInputs
from selfrepair.engine.self_repair import measure_heads
from selfrepair.engine.sets import measure_sets
from selfrepair.models.builders import random_model
from selfrepair.models.loading import PROCESSING, load_local_checkpoint
from selfrepair.models.value_bias import FOLDED_B_V, folded_value_bias
from selfrepair.reference.atp import hf_layers, value_offset
from selfrepair.reference.tasks import TaskReference, reference_task_heads, reference_task_set
from selfrepair.tasks.prompts import TaskPrompts
from selfrepair.variables import HEAD_VARIABLES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox", "llama_gqa"])
def hf_pair(request, tmp_path_factory):
    """(Hugging Face model, the same checkpoint loaded by the project)."""
    hf_model, path = hf_checkpoint(request.param, tmp_path_factory)
    return hf_model, load_local_checkpoint(path)


def test_the_loader_keeps_the_value_biases_hugging_face_holds(hf_pair):
    """The folded b_V the loader keeps is Hugging Face's value bias plus the first LayerNorm's
    bias through W_V (reference.atp.value_offset, from the HF weights alone), per head; the
    processed model's own b_V is 0 (TransformerLens folded it into b_O)."""
    hf_model, model = hf_pair
    blocks, _, _, n_heads = hf_layers(hf_model)
    kept = folded_value_bias(model)
    assert kept.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    for layer, blk in enumerate(blocks):
        want = value_offset(hf_model, blk).detach().view(n_heads, -1)
        torch.testing.assert_close(kept[layer], want, atol=1e-5, rtol=0)
    assert FOLDED_B_V not in model.state_dict()  # not a weight: the stores' digests unchanged
    if hf_model.config.model_type != "llama":
        assert float(kept.abs().max()) > 0.05  # there is a bias, or the check proves little


@pytest.mark.parametrize("family", ["gpt2", "pythia", "llama"])
def test_random_models_keep_the_b_v_transformer_lens_folds(family):
    """random_model's kept b_V is the b_V of the same weights processed by TransformerLens with
    fold_value_biases=False; unprocessed, it is 0 (hook_z already holds b_V)."""
    model = random_model(family)
    plain = random_model(family, process=False)
    unfolded = random_model(family, process=False)
    unfolded.load_and_process_state_dict(
        unfolded.state_dict(), **PROCESSING, fold_value_biases=False
    )
    want = unfolded.b_V.detach()  # [layer, head, d_head], grouped-query heads repeated
    torch.testing.assert_close(folded_value_bias(model), want, atol=1e-6, rtol=0)
    assert float(want.abs().max()) > 0.05
    assert float(folded_value_bias(plain).abs().max()) == 0
    with pytest.raises(ValueError, match="no record of the value biases"):
        folded_value_bias(torch.nn.Module())


def coax_zero_metric(hf_model, tokens, layer: int, head: int) -> np.ndarray:
    """The centred correct-token logit of Hugging Face's forward pass with the head's slice of
    the attention output projection's input set to 0 (CoAx's register_head_ablation)."""
    blocks, attn_out, _, n_heads = hf_layers(hf_model)

    def zero(module, args):
        x = args[0].clone()
        d_head = x.shape[-1] // n_heads
        x[..., head * d_head : (head + 1) * d_head] = 0
        return (x, *args[1:])

    handle = attn_out(blocks[layer]).register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            logits = hf_model(tokens).logits[:, :-1].double()
    finally:
        handle.remove()
    centred = logits - logits.mean(-1, keepdim=True)
    return centred.gather(-1, tokens[:, 1:, None])[..., 0].numpy()


def test_zero_with_value_bias_is_coax_zero_on_hugging_face(hf_pair):
    """measure_heads' ablated metric (clean + logit_diff) under zero-with-value-bias is Hugging
    Face's with the head's whole slice entering W_O zeroed, for every head; plain zero is not
    (it keeps b_V) wherever there is a value bias."""
    hf_model, model = hf_pair
    tokens = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    got = measure_heads(model, tokens, "zero-with-value-bias", batch_size=2)
    plain = measure_heads(model, tokens, "zero", batch_size=2)
    ablated = got.logit_clean.values[None, None] + got.logit_diff.values
    kept = plain.logit_clean.values[None, None] + plain.logit_diff.values
    worst_plain = 0.0
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            want = coax_zero_metric(hf_model, tokens, layer, head)
            np.testing.assert_allclose(ablated[layer, head], want, atol=TOL, rtol=0)
            worst_plain = max(worst_plain, float(np.abs(kept[layer, head] - want).max()))
    if hf_model.config.model_type != "llama":  # Llama has no value bias: the two are one
        assert worst_plain > 1e-2


def test_template_groups_of_ioi_prompts():
    """Each (template, order) pair is one group, numbered in sorted order; no template: one."""
    info = {"template": np.array([3, 3, 0, 3, 0]), "abba": np.array([1, 0, 1, 1, 1])}
    prompts = TaskPrompts(*(np.zeros((5, 2)),) * 6, text=[""] * 5, info=info)
    np.testing.assert_array_equal(prompts.groups, [2, 1, 0, 2, 0])
    prompts.info = {"length": np.array([4] * 5)}
    np.testing.assert_array_equal(prompts.groups, [0] * 5)


def test_an_ioi_tasks_groups_reach_the_engine():
    """The engine's TaskInputs of an IOI task (stages.tasks.task_inputs) carry each prompt's
    group; the prompts of a group share template, order and length, so that 'the same position'
    is the same word of the template."""
    from tasks_helpers import ioi_tokenizer

    from selfrepair.stages.tasks import task_inputs
    from selfrepair.tasks.ioi import ioi_prompts

    prompts = ioi_prompts(ioi_tokenizer(), 40, seed=3, bos_id=0)
    groups = task_inputs(prompts, "logit_diff").groups.numpy()
    np.testing.assert_array_equal(groups, prompts.groups)
    assert 2 < len(set(groups)) < 40  # several templates, some shared
    for group in set(groups):
        mine = groups == group
        for key in ("template", "abba"):
            assert len(set(prompts.info[key][mine])) == 1
        assert len(set(prompts.length[mine])) == 1


def grouped_task(model):
    """padded_task's rows with two template groups (rows 0, 2, ... and 1, 3, ...)."""
    tokens, task = padded_task(model, seed=5)
    groups = torch.arange(tokens.shape[0]) % 2
    return tokens, TaskInputs(task.counter, task.partners, task.real, groups)


def test_template_mean_per_group_matches_the_full_forward_reference(tiny_model):
    """Every variable of every head, and a joint set, under template-mean with two groups
    against one full forward pass per head whose z is the mean, computed row by row, of the
    corrupted prompts' z of the row's group at each position (reference.atp.template_mean)."""
    tokens, task = grouped_task(tiny_model)
    got = measure_heads(tiny_model, tokens, "template-mean", task=task, batch_size=2)
    ref = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real, task.groups)
    one = TaskReference(tiny_model, tokens, task.counter, task.partners, task.real)
    expected = reference_task_heads(ref, "template-mean")
    apart = 0.0
    for (layer, head), values in expected.items():
        for name in HEAD_VARIABLES:
            err = np.abs(got[name].values[layer, head] - values[name]).max()
            assert err < TOL, (name, layer, head, err)
    for (layer, head), values in reference_task_heads(one, "template-mean").items():
        diff = np.abs(got.logit_diff.values[layer, head] - values["logit_diff"]).max()
        apart = max(apart, float(diff))
    assert apart > 1e-3  # the groups matter: one group gives other numbers
    heads = [(0, 1), (1, 2)]
    sets = measure_sets(tiny_model, tokens, "template-mean", {"s": heads}, task=task)
    want = reference_task_set(ref, "template-mean", heads)
    for name in HEAD_VARIABLES:
        assert np.abs(sets.sel(set="s")[name].values - want[name]).max() < TOL, name


def test_template_mean_refuses_running_text_in_one_line(tiny_model, tiny_tokens):
    with pytest.raises(ValueError, match=r"template-mean ablation needs a task's corrupted"):
        measure_heads(tiny_model, tiny_tokens, "template-mean")


def test_the_workflow_runs_both_kinds_on_a_task(finished_run, tmp_path):
    """On a copy of the finished demo, an overlay adding both kinds to its task plans their
    task_ablate jobs (snakemake -n), which run and write stores named after each kind."""
    import shutil

    import yaml
    from helpers import link_project, snakemake

    from selfrepair.stages.store import open_zarr

    run, configs = finished_run
    copy = link_project(tmp_path)
    shutil.copytree(run / "results", copy / "results", ignore=shutil.ignore_patterns("logs"))
    shutil.copytree(run / "resources", copy / "resources")
    kinds = ["zero-with-value-bias", "template-mean"]
    tasks: dict = {}  # the run's tasks as its config files merge them, key by key
    for name in configs:
        for task, spec in (yaml.safe_load((copy / name).read_text()).get("tasks") or {}).items():
            tasks.setdefault(task, {}).update(spec)
    task = next(iter(tasks))
    ablations = [*tasks[task].get("ablations", ["corrupted"]), *kinds]
    overlay = tmp_path / "kinds.yaml"
    overlay.write_text(yaml.safe_dump({"tasks": {task: {"ablations": ablations}}}))
    model = "tiny-gpt2"
    targets = [f"results/{model}/tasks/{task}/ablation/{k}.zarr" for k in kinds]
    common = ("--cores", "1", "--rerun-triggers", "mtime", "--configfile", *configs, str(overlay))
    plan = snakemake(*targets, "-n", *common, cwd=copy, timeout=600)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert plan.stdout.count("rule task_ablate:") == len(kinds), plan.stdout[-3000:]
    proc = snakemake(*targets, *common, cwd=copy, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind, target in zip(kinds, targets, strict=True):
        ds = open_zarr(copy / target)
        assert ds.attrs["ablation"] == kind
        assert np.isfinite(ds.logit_diff.values).any() and np.abs(ds.logit_diff.values).max() > 0
