"""A nanoLlama as Hugging Face's ``LlamaForCausalLM``: the same architecture, so the same weights give the same
logits (tested). The one place the weight names are mapped; the benchmark compares speeds on the twin. With its
byte tokenizer and chat template (``save_hf``), a trained run is a model folder any HF tool loads: every run
writes one as ``model/``, so ``itl-recall --model runs/pretrain/<run>/model`` evaluates it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainers.nanollama.model import Llama
from trainers.nanollama.tokenizer import ByteTokenizer


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


def chat_template(tokenizer: ByteTokenizer) -> str:
    """A Jinja chat template rendering a conversation as ``ByteTokenizer.encode_conversation`` does.

    ``<|role|>`` + text + ``<|end|>`` per message, tool calls in the tokenizer's format, ``<|assistant|>`` to end
    a prompt. (A call of a tool other than ``lookup`` has no ``find`` form: it is written as its name and JSON.)
    """
    if tokenizer.tool_format == "find":
        call = (
            "{%- if call.name == 'lookup' and call.arguments.attribute is defined -%}"
            "```sql\nFIND {{ call.arguments.attribute }} FOR {{ call.arguments.name }}\n```"
            "{%- else -%}```sql\n{{ call.name }} {{ call.arguments | tojson }}\n```{%- endif -%}"
        )
    else:  # hermes: HermesFormat.render's JSON text ("</" written "<\/" inside it)
        call = (
            "<tool_call>\n{{ {'name': call.name, 'arguments': call.arguments} | tojson | replace('</', '<\\\\/') }}"
            "\n</tool_call>"
        )
    return (
        "{%- for message in messages -%}"
        "{{ '<|' + message.role + '|>' }}"
        "{%- set calls = message.tool_calls or [] -%}"
        "{%- if message.role == 'assistant' and calls -%}"
        "{%- if message.content -%}{{ message.content }}\n{%- endif -%}"
        "{%- for entry in calls -%}{%- set call = entry.function -%}"
        + call
        + "{%- if not loop.last -%}\n{%- endif -%}{%- endfor -%}"
        "{%- else -%}{{ message.content or '' }}{%- endif -%}"
        "<|end|>"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
    )


def hf_tokenizer(tokenizer: ByteTokenizer) -> Any:
    """``tokenizer`` as a ``PreTrainedTokenizerFast`` with the same ids (0-255 the bytes, then the role, end and
    call-marker tokens) and its chat template.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()  # byte -> the printable character byte-level BPE writes it as
    core = Tokenizer(models.BPE(vocab={byte_chars[b]: b for b in range(256)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    markers = {tokenizer.call_open_id, tokenizer.call_close_id}
    for token_id in sorted(tokenizer.special_text):  # added in id order, so each gets its ByteTokenizer id
        text = tokenizer.special_text[token_id]
        core.add_tokens([AddedToken(text, special=token_id not in markers, normalized=False)])
    end = tokenizer.special_text[tokenizer.end_id]
    fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=end, pad_token=end)
    fast.chat_template = chat_template(tokenizer)
    return fast


def save_hf(model: Llama, tokenizer: ByteTokenizer, folder: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face model folder (``from_pretrained``, ``itl-recall
    --model FOLDER``): greedy decoding stops at ``<|end|>`` or a new role token, as ``NanoLlamaPolicy`` does.
    """
    folder = Path(folder)
    hf = to_hf(model)
    stops = [tokenizer.end_id, *tokenizer.role_id.values()]
    hf.generation_config.eos_token_id = stops
    hf.generation_config.pad_token_id = tokenizer.end_id
    hf.save_pretrained(folder)
    hf_tokenizer(tokenizer).save_pretrained(folder)
    return folder
