"""A nanoLlama as Hugging Face's ``LlamaForCausalLM``: the same architecture, so the same weights give the same
logits (tested). The one place the weight names are mapped; the benchmark compares speeds on the twin.
"""

from __future__ import annotations

from typing import Any

from trainers.nanollama.model import Llama


def hf_state_dict(model: Llama) -> dict[str, Any]:
    """``model``'s weights under ``LlamaForCausalLM``'s names (detached copies)."""
    state = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        state |= {
            p + "self_attn.q_proj.weight": layer.attn.q.weight,
            p + "self_attn.k_proj.weight": layer.attn.k.weight,
            p + "self_attn.v_proj.weight": layer.attn.v.weight,
            p + "self_attn.o_proj.weight": layer.attn.out.weight,
            p + "mlp.gate_proj.weight": layer.ffn.gate.weight,
            p + "mlp.up_proj.weight": layer.ffn.up.weight,
            p + "mlp.down_proj.weight": layer.ffn.down.weight,
            p + "input_layernorm.weight": layer.attn_norm.weight,
            p + "post_attention_layernorm.weight": layer.ffn_norm.weight,
        }
    return {k: v.detach().clone() for k, v in state.items()}


def to_hf(model: Llama, attn_implementation: str = "sdpa") -> Any:
    """``LlamaForCausalLM`` of ``model``'s shape holding its weights, on its device."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    cfg = model.cfg
    hf = LlamaForCausalLM(
        HFConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.emb_dim,
            intermediate_size=cfg.ffn_dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_heads,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=False,
            attn_implementation=attn_implementation,
        )
    )
    hf.load_state_dict(hf_state_dict(model))
    return hf.to(next(model.parameters()).device)
