"""Attribution patching (engine.atp) against independent references: autograd on Hugging Face
`transformers`' own models (z at the attention output projection's input), autograd on
TransformerLens' plain forward with explicit per-layer detaching (GradDrop), and the exact
engine's own ablations scaled down to z + eps (z' - z), whose effect / eps must approach AtP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_architectures import hf_checkpoint

from selfrepair.engine.ablation import ablation_chunks, mean_z
from selfrepair.engine.atp import measure_atp
from selfrepair.engine.gradients import frozen_parameters, grad_pass, token_groups
from selfrepair.engine.metric import TokenMetric
from selfrepair.engine.self_repair import ablated_pass
from selfrepair.models.blocks import cached_weights
from selfrepair.models.loading import load_local_checkpoint
from selfrepair.models.readout import readout
from selfrepair.reference.atp import hf_reference_atp, reference_atp
from selfrepair.variables import ABLATIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4  # logits; the engine and the references agree to about 1e-5 on these models


def every_token(model, tokens) -> np.ndarray:
    n_rows, n_pos = tokens.shape[0], tokens.shape[1] - 1
    return np.ones((model.cfg.n_layers, model.cfg.n_heads, n_rows, n_pos), bool)


def dense_tokens(ds, top: np.ndarray, name: str = "atp_token") -> np.ndarray:
    """The per-token entries of measure_atp back on [..., layer, head, batch, pos] (NaN where
    not asked)."""
    values = ds[name].values
    out = np.full((*values.shape[:-1], *top.shape), np.nan)
    out[..., *np.nonzero(top)] = values
    return out


@pytest.fixture(scope="module", params=["gpt2", "gpt_neox", "llama_gqa"])
def hf_pair(request, tmp_path_factory):
    """(Hugging Face model, the same checkpoint loaded by the project, tokens)."""
    hf_model, path = hf_checkpoint(request.param, tmp_path_factory)
    tokens = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(1))
    return hf_model, load_local_checkpoint(path), tokens


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_atp_equals_autograd_on_hugging_face(hf_pair, ablation):
    """Row and per-token AtP of every head, and GradDrop for every dropped layer, against
    autograd on transformers' own forward pass (z' from its own z: the project's resample
    partner, mean and zero, the zero being the processed model's)."""
    hf_model, model, tokens = hf_pair
    top = every_token(model, tokens)
    got = measure_atp(model, tokens, ablation, per_token=top, batch_size=2)
    ref = hf_reference_atp(hf_model, tokens, ablation, per_token=True)
    assert np.abs(ref["row"]).max() > 0.3  # estimates of whole logits, not of noise
    np.testing.assert_allclose(got.atp_row.values, ref["row"], atol=TOL, rtol=0)
    np.testing.assert_allclose(dense_tokens(got, top), ref["token"], atol=TOL, rtol=0)
    gd_rows = got.graddrop_row.values
    for layer in range(model.cfg.n_layers):
        dropped = hf_reference_atp(hf_model, tokens, ablation, drop_layer=layer)
        np.testing.assert_allclose(gd_rows[layer], dropped["row"], atol=TOL, rtol=0)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_atp_and_graddrop_equal_the_detaching_reference(tiny_model, tiny_tokens, ablation):
    """On GPT-2, Pythia and Llama style models, in batches of 4 (resample partners outside
    the batch): rows, per-token estimates on a random selection, and every GradDrop layer
    against TransformerLens' plain forward with that layer's outputs detached."""
    n_layers = tiny_model.cfg.n_layers
    top = np.random.default_rng(0).random(every_token(tiny_model, tiny_tokens).shape) < 0.1
    got = measure_atp(tiny_model, tiny_tokens, ablation, top=top, per_token=top, batch_size=4)
    asked = top.any((0, 1))  # the reference's backward passes: only these tokens
    ref = reference_atp(tiny_model, tiny_tokens, ablation, per_token=asked)
    np.testing.assert_allclose(got.atp_row.values, ref["row"], atol=TOL, rtol=0)
    np.testing.assert_allclose(got.atp_token.values, ref["token"][top], atol=TOL, rtol=0)
    # each head's own tokens of a row: the sum of their per-token references
    own = np.where(top, np.nan_to_num(ref["token"]), 0).sum(-1)
    np.testing.assert_allclose(got.atp_top.values, own, atol=TOL, rtol=0)
    assert np.array_equal(got.n_top.values, top.sum(-1))
    for layer in range(n_layers):
        dropped = reference_atp(
            tiny_model, tiny_tokens, ablation, drop_layer=layer, per_token=asked
        )
        np.testing.assert_allclose(got.graddrop_row.values[layer], dropped["row"], atol=TOL, rtol=0)
        np.testing.assert_allclose(
            got.graddrop_token.values[layer], dropped["token"][top], atol=TOL, rtol=0
        )
        own = np.where(top, np.nan_to_num(dropped["token"]), 0).sum(-1)
        np.testing.assert_allclose(got.graddrop_top.values[layer], own, atol=TOL, rtol=0)
        # Dropping a layer changes the estimates of its heads (to 0) and of those below it.
        changed = np.abs(dropped["row"] - ref["row"]).max((1, 2)) > 1e-3
        assert list(np.flatnonzero(changed)) == list(range(layer + 1))


def test_rows_are_their_tokens_and_the_units_add_up(tiny_model, tiny_tokens):
    """With every token asked, a row's estimate is the sum of its tokens' (the metric is their
    sum), and so is each head's estimate on all its tokens; GradDrop with layer l dropped is 0
    for l's heads and AtP for the heads above."""
    top = every_token(tiny_model, tiny_tokens)
    got = measure_atp(tiny_model, tiny_tokens, "resample", top=top, per_token=top)
    per_token = dense_tokens(got, top)
    np.testing.assert_allclose(per_token.sum(-1), got.atp_row.values, atol=1e-5, rtol=0)
    gd = dense_tokens(got, top, "graddrop_token")
    np.testing.assert_allclose(gd.sum(-1), got.graddrop_row.values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.atp_top.values, got.atp_row.values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.graddrop_top.values, got.graddrop_row.values, atol=1e-5, rtol=0)
    for layer in range(tiny_model.cfg.n_layers):
        assert np.all(got.graddrop_row.values[layer, layer] == 0)
        above = got.graddrop_row.values[layer, layer + 1 :]
        assert np.array_equal(above, got.atp_row.values[layer + 1 :])
    assert np.all(got.n_scored.values == tiny_tokens.shape[1] - 1)


@pytest.mark.parametrize("fused", [True, False])
def test_graddrop_passes_are_full_passes_with_the_layer_cut_bitwise(tiny_model, tiny_tokens, fused):
    """GradDrop's pass for layer d starts at block d's input with the AtP pass's gradient at its
    output (engine.gradients): bitwise the gradients of a full backward pass through a second
    graph whose layer-d attention and MLP outputs are detached, for the rows' weights and for
    one head's own tokens."""
    model, n_layers = tiny_model, tiny_model.cfg.n_layers
    rows = torch.arange(tiny_tokens.shape[0])
    ro = readout(model)
    metric = TokenMetric(ro, tiny_tokens)(rows)
    own = torch.rand(metric.weight.shape, generator=torch.Generator().manual_seed(2)) < 0.2
    with torch.enable_grad(), frozen_parameters(model), cached_weights():
        gp = grad_pass(model, tiny_tokens, ro, metric, rows, fused)
        for weight in (metric.weight, own.float()):
            _, output_grads = gp.grads(weight, [], range(1, n_layers))
            for dropped in range(1, n_layers):
                below = list(range(dropped))
                got = gp.dropped_grads(dropped, output_grads[dropped], below)
                cut = (f"blocks.{dropped}.hook_{name}_out" for name in ("attn", "mlp"))
                hooks = [(name, lambda x, hook: x.detach()) for name in cut]
                with model.hooks(fwd_hooks=hooks):
                    full = grad_pass(model, tiny_tokens, ro, metric, rows, fused)
                want, _ = full.grads(weight, below)
                assert all(torch.equal(got[layer], want[layer]) for layer in below)


def test_graddrop_on_the_head_units_can_be_left_out(tiny_model, tiny_tokens):
    top = np.random.default_rng(1).random(every_token(tiny_model, tiny_tokens).shape) < 0.2
    full = measure_atp(tiny_model, tiny_tokens, "zero", top=top)
    rows_only = measure_atp(tiny_model, tiny_tokens, "zero", top=top, top_graddrop=False)
    assert "graddrop_top" in full and "graddrop_top" not in rows_only
    for name in ("atp_row", "graddrop_row", "atp_top", "n_top"):
        np.testing.assert_array_equal(full[name].values, rows_only[name].values)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_scaled_ablations_approach_atp(tiny_model, tiny_tokens, ablation):
    """The exact engine's effect of z -> z + eps (z' - z) on each row's summed logit, over eps,
    approaches the AtP estimate linearly: the gap shrinks about tenfold from eps = 0.1 to 0.01."""
    atp = measure_atp(tiny_model, tiny_tokens, ablation, graddrop=False).atp_row.values
    ro = readout(tiny_model)
    layers = range(tiny_model.cfg.n_layers)
    heads = list(range(tiny_model.cfg.n_heads))
    gaps = {}
    for eps in (0.1, 0.01):
        exact = np.zeros_like(atp)
        with torch.inference_mode():
            chunk = next(
                ablation_chunks(tiny_model, tiny_tokens, ablation, layers, ro, batch_size=6)
            )
            for layer in layers:
                z = chunk.cp.z[layer].permute(2, 0, 1, 3)
                z_eps = z + eps * (chunk.z_new(layer).permute(2, 0, 1, 3) - z)
                res = ablated_pass(tiny_model, ro, chunk.cp, layer, heads, z_eps)
                exact[layer] = res["logit_diff"].sum(-1).cpu().numpy() / eps
        gaps[eps] = float(np.abs(exact - atp).max())
    scale = float(np.abs(atp).max())
    assert scale > 0.5
    assert gaps[0.01] < gaps[0.1] / 5, gaps  # first order: the gap is O(eps)
    assert gaps[0.01] < 0.02 * scale, gaps


def test_token_groups_take_one_position_per_row_per_pass():
    selected = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    groups = token_groups(selected)
    assert groups.tolist() == [[0, 2, 3], [-1, -1, -1], [1, -1, -1]]
    assert token_groups(torch.zeros(2, 3, dtype=torch.bool)).shape == (2, 0)


def test_a_given_partner_and_mean_are_used(tiny_model, tiny_tokens):
    """The ablate job's resample source and mean z, when given, are the ones used: partner
    (i - 1) mod n is the default partner of the rows in reverse order; the mean z passed is
    the one measure_heads would take."""
    n = tiny_tokens.shape[0]
    source = torch.tensor([(i - 1) % n for i in range(n)])
    got = measure_atp(tiny_model, tiny_tokens, "resample", source=source, graddrop=False)
    ref = reference_atp(tiny_model, tiny_tokens.flip(0), "resample")
    np.testing.assert_allclose(got.atp_row.values, ref["row"][..., ::-1], atol=TOL, rtol=0)
    assert np.array_equal(got.resample_source.values, source.numpy())
    layers = range(tiny_model.cfg.n_layers)
    z_mean = mean_z(tiny_model, tiny_tokens, layers, batch_size=n, include_bos=False)
    given = measure_atp(tiny_model, tiny_tokens, "mean", z_mean=z_mean, graddrop=False)
    own = measure_atp(tiny_model, tiny_tokens, "mean", mean_include_bos=False, graddrop=False)
    assert np.array_equal(given.atp_row.values, own.atp_row.values)
    with pytest.raises(ValueError, match="token masks must be"):
        measure_atp(tiny_model, tiny_tokens, "zero", top=np.ones((1, 1, 1, 1), bool))
