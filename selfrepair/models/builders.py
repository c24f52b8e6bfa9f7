"""Every model the project builds rather than loads: tiny random HookedTransformers of the paper's
three architecture families for the tests and benchmarks (family_config, random_model, processed
as the paper loads models), and randomly initialised Hugging Face causal LMs that the demo trains
(build_model; data.training trains them, models.loading loads their checkpoints).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from selfrepair.models import value_bias
from selfrepair.models.loading import PROCESSING

__all__ = ["ARCHS", "FAMILIES", "build_model", "family_config", "random_model"]

FAMILIES = ("gpt2", "pythia", "llama")
ARCHS = ("gpt2", "pythia")


def family_config(family: str, **dims) -> HookedTransformerConfig:
    """A HookedTransformerConfig of one of the paper's architecture families."""
    base = dict(
        n_layers=3,
        d_model=64,
        n_heads=4,
        d_head=16,
        d_mlp=256,
        d_vocab=97,
        n_ctx=32,
        seed=0,
        init_weights=True,
        device="cpu",
        model_name=f"random-{family}",
    )
    base.update(dims)
    if "d_head" not in dims:
        base["d_head"] = base["d_model"] // base["n_heads"]
    if "d_mlp" not in dims:
        base["d_mlp"] = 4 * base["d_model"]
    if family == "gpt2":
        extra = dict(
            act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard"
        )
    elif family == "pythia":
        extra = dict(
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=max(2, base["d_head"] // 4),
            parallel_attn_mlp=True,
        )
    elif family == "llama":
        extra = dict(
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=base["d_head"],
            gated_mlp=True,
            final_rms=True,
            n_key_value_heads=max(1, base["n_heads"] // 2),
        )
    else:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    return HookedTransformerConfig(**base, **extra)


def random_model(
    family: str, process: bool = True, noise: float = 0.5, **dims
) -> HookedTransformer:
    """A tiny random model of a family, every parameter perturbed (LayerNorm weights and all
    biases too, so nothing is trivially 1 or 0), then processed as the paper loads models.

    Args:
        family: one of FAMILIES ("gpt2", "pythia", "llama").
        process: fold LayerNorm and centre weights as load_model does.
        noise: size of the perturbation.
        dims: HookedTransformerConfig overrides (n_layers, d_model, ...; seed).
    """
    cfg = family_config(family, **dims)
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            bump = torch.randn(param.shape, generator=gen) * noise
            leaf = name.rsplit(".", 1)[-1].lstrip("_")
            if leaf == "w":  # norm weights: around 1
                param.copy_(1.0 + 0.3 * bump)
            elif leaf == "b" or leaf.startswith("b_"):
                param.copy_(0.2 * bump)
            else:
                param.add_(bump * param.std().clamp(min=0.02))
    model.eval()
    with value_bias.recording() as kept:
        if process:
            model.process_weights_(**PROCESSING)
    return value_bias.attach(model, kept)


def build_model(
    arch: str,
    vocab_size: int,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_ctx: int,
    d_mlp: int | None = None,
    seed: int = 0,
    bos_id: int = 0,
    eos_id: int = 0,
    tie_embeddings: bool = False,
):
    """A randomly initialised Hugging Face causal LM: arch 'gpt2' -> GPT2LMHeadModel (sequential
    blocks, learned positions, gelu_new, tied embeddings); 'pythia' -> GPTNeoXForCausalLM
    (parallel attention + MLP, rotary on 25% of each head, gelu, untied unembedding unless
    tie_embeddings). No dropout. bos_id / eos_id: the tokenizer's `<|endoftext|>` id.
    tie_embeddings: a Pythia model's unembedding is its embedding (GPT-2's always is): copying a
    token is then one map for every token, which a small model learns fast (docs/demo.md,
    Induction)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
    if tie_embeddings and arch != "pythia":
        raise ValueError(f"tie_embeddings is for pythia models; {arch} models are always tied")
    d_mlp = 4 * d_model if d_mlp is None else d_mlp
    torch.manual_seed(seed)
    if arch == "gpt2":
        if d_mlp != 4 * d_model:
            # TransformerLens reads GPT-2's MLP width as 4 * d_model, ignoring n_inner.
            raise ValueError(f"gpt2 models need d_mlp = 4 * d_model = {4 * d_model}")
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_ctx,
            n_ctx=n_ctx,  # TransformerLens reads n_ctx
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
        )
        model = GPT2LMHeadModel(config)
    elif arch == "pythia":
        config = GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=d_mlp,
            max_position_embeddings=n_ctx,
            rotary_pct=0.25,
            use_parallel_residual=True,
            hidden_act="gelu",
            attention_dropout=0.0,
            hidden_dropout=0.0,
            tie_word_embeddings=tie_embeddings,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
        )
        model = GPTNeoXForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return model
