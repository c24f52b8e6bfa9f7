"""Models added by `path:`: a tiny random checkpoint of each tested architecture, saved with
transformers' own `save_pretrained`, loads through the project's loader
(models.load_local_checkpoint) and its clean pass gives Hugging Face's own logits; architectures
the project cannot measure are refused at config time, naming the model and the reason."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import selfrepair.config as sr_config
from selfrepair.config import parallel_blocks
from selfrepair.engine.clean import clean_direct_effects, decomposition_error
from selfrepair.models.loading import load_local_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, CTX, ROWS, SEQ = 64, 32, 3, 16
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
DECODER = dict(**SMALL, intermediate_size=64, max_position_embeddings=CTX)

# docs/models-by-path.md: keep the two lists in step.
ARCHITECTURES = {
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=CTX
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**DECODER),  # Pythia
    "llama_gqa": lambda: tf.LlamaConfig(**DECODER, num_key_value_heads=2),
    "qwen2": lambda: tf.Qwen2Config(**DECODER, num_key_value_heads=2),
    "mistral": lambda: tf.MistralConfig(**DECODER, num_key_value_heads=2, sliding_window=8),
    "gpt_neo": lambda: tf.GPTNeoConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        max_position_embeddings=CTX,
    ),
    "opt": lambda: tf.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=CTX,
        word_embed_proj_dim=32,
    ),
    "phi": lambda: tf.PhiConfig(**DECODER, partial_rotary_factor=0.5),
}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight redrawn at a scale where logits differ by whole units (Hugging Face's init
    leaves them near 0, where any loader would pass a 1e-4 comparison): norm weights around 1,
    biases small, matrices ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    return model.eval()


def hf_checkpoint(name: str, tmp_path_factory) -> tuple[tf.PreTrainedModel, str]:
    """(a perturbed random Hugging Face model of architecture `name`, seed 0, its checkpoint
    dir written with save_pretrained): the models the references run beside the project's."""
    torch.manual_seed(0)
    hf_model = perturbed(tf.AutoModelForCausalLM.from_config(ARCHITECTURES[name]()))
    path = tmp_path_factory.mktemp(name) / "checkpoint"
    hf_model.save_pretrained(str(path))
    return hf_model, str(path)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def saved(request, tmp_path_factory):
    """(name, Hugging Face model, checkpoint dir) of one architecture, saved with save_pretrained."""
    return request.param, *hf_checkpoint(request.param, tmp_path_factory)


def test_checkpoint_passes_the_config_checks_with_its_size(saved):
    name, hf_model, path = saved
    entry = {"name": name, "path": path}
    sr_config.check_model_entry(name, entry)
    assert sr_config.model_dims(entry) == (2, 4)


def test_clean_logits_match_hugging_face(saved):
    """The project's loader and clean pass against Hugging Face's own forward pass: centred
    correct-token logits (what the clean store holds) and every centred logit, to 1e-4."""
    name, hf_model, path = saved
    hooked = load_local_checkpoint(path)
    tokens = torch.randint(0, VOCAB, (ROWS, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model(tokens).logits.float()
        got = hooked(tokens).float()
    ref = ref - ref.mean(-1, keepdim=True)
    got = got - got.mean(-1, keepdim=True)
    assert ref.std() > 0.5  # the comparison below is not between near-zero logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)

    ds = clean_direct_effects(hooked, tokens)
    correct = ref[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(torch.from_numpy(ds.logit_clean.values), correct, atol=1e-4, rtol=0)
    assert decomposition_error(ds) < 1e-4
    # the config-time reading of the block layout (neuron experiment checks) agrees with the model
    assert parallel_blocks({"name": name, "path": path}) == hooked.cfg.parallel_attn_mlp


def write_config(tmp_path, hf: dict) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    return str(tmp_path)


@pytest.mark.parametrize(
    "hf, expected",
    [
        (
            {"architectures": ["BertForMaskedLM"], "model_type": "bert"},
            "is a BertForMaskedLM (bert) checkpoint, not a causal language model;",
        ),
        (
            {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"},
            "is a T5ForConditionalGeneration (t5) checkpoint, not a causal language model;",
        ),
        (
            {"architectures": ["GemmaForCausalLM"], "model_type": "gemma"},
            "is a GemmaForCausalLM (gemma) checkpoint: TransformerLens 3.9 builds Gemma models "
            "only from its own hub names (e.g. google/gemma-2b), never from a local config.json; "
            "use that name without `path`",
        ),
        (
            {"architectures": ["FalconForCausalLM"], "model_type": "falcon"},
            "is a FalconForCausalLM (falcon) checkpoint, which TransformerLens 3.9 cannot convert",
        ),
    ],
)
def test_unsupported_architectures_are_refused_naming_model_and_reason(tmp_path, hf, expected):
    path = write_config(tmp_path / "ckpt", hf)
    with pytest.raises(sr_config.ConfigError) as info:
        sr_config.check_model_entry("mine", {"name": "mine", "path": path})
    message = str(info.value)
    assert message.startswith(f"config key models[mine].path: {path!r} {expected}")
    assert "\n" not in message


def test_gemma_checkpoint_is_refused_by_the_config_check(tmp_path):
    """A real Gemma checkpoint (transformers' own config class) is refused before any job."""
    cfg = tf.GemmaConfig(**DECODER, num_key_value_heads=1, head_dim=8)
    path = tmp_path / "gemma"
    tf.GemmaForCausalLM(cfg).save_pretrained(str(path))
    with pytest.raises(sr_config.ConfigError, match=r"models\[g\]\.path: .* GemmaForCausalLM"):
        sr_config.check_model_entry("g", {"name": "g", "path": str(path)})


@pytest.mark.parametrize(
    "hf",
    [
        {"n_layer": 3, "n_head": 5},  # GPT-2, Bloom, GPT-J
        {"num_layers": 3, "num_heads": 5},  # GPT-Neo
        {"num_hidden_layers": 3, "num_attention_heads": 5},  # Llama, NeoX, OPT, ...
    ],
)
def test_head_ranges_read_every_config_spelling(tmp_path, hf):
    path = write_config(tmp_path / "ckpt", {"architectures": ["GPTNeoForCausalLM"], **hf})
    assert sr_config.model_dims({"name": "m", "path": path}) == (3, 5)
