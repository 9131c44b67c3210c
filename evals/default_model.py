"""The embedded default model: a small Llama with a byte-level BPE tokenizer, built offline.

The tokenizer is byte-level BPE trained with the ``tokenizers`` library on the template text
only (questions, answers, the tool-call skeleton and the attribute values), never on people's
names. Capitalised words (names, places) are pre-tokenised into single letters, so a name is the
same letters in the question, the tool call and the answer, and copying a name never seen in
training is copying letters the model has copied before: with merges inside names the default run
miscopied unseen first names (recall 0.71 on unseen people vs 1.00 on training people). Lowercase
words (the template text, occupations) keep their merges, which shorten the sequences. The
project's tool chat template is installed; model and tokenizer are saved with ``save_pretrained``
and reload with the Auto classes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from itl_env import chat_template, dialogs
from itl_env.store import Attribute

PAD = "<|pad|>"


@dataclass(frozen=True)
class DefaultModelConfig:
    """The embedded default model: 2 layers x 128 (528k parameters with its 396-token vocabulary), the model
    ``trainers/sft.py`` trains by default. Heads of 32 dimensions, an MLP 3x as wide as the model.
    """

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 512
    seed: int = 0

    @classmethod
    def of_width(cls, hidden_size: int, layers: int, seed: int = 0) -> DefaultModelConfig:
        """The default model's shape at another width and depth (heads of 32 dims, MLP 3x wide)."""
        return cls(hidden_size, layers, max(1, hidden_size // 32), 3 * hidden_size, seed=seed)


def template_corpus() -> list[str]:
    """The text the tokenizer's merges are learned from: what the template renders around the facts (roles, the
    tools line, questions, calls, answers), with neither names nor attribute values. A value is copied from the
    tool result into the answer, so it must be made of pieces the model copies everywhere: with whole-word
    tokens for occupations the default run answered one frequent occupation for most people (recall 0.76).
    """
    tools_line = "lookup(name, attribute: " + "|".join(a.value for a in Attribute) + ")"
    corpus = ["user\nassistant\ntool\nsystem\nTools:\n" + tools_line]
    for attribute in Attribute:
        corpus += [q.format(name="") for q in dialogs.QUESTIONS[attribute]]
        call = {"name": "lookup", "arguments": {"name": "", "attribute": attribute.value}}
        corpus.append(dialogs.answer("", attribute, ""))
        corpus.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
    return corpus


def byte_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the project's chat template installed."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # a lowercase word is one piece; a letter inside a capitalised word is a piece of its own
            pre_tokenizers.Split(Regex(r"(?<![A-Za-z])[a-z]+|[A-Za-z]|[0-9]|[^A-Za-z0-9]+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    special = [PAD, chat_template.START_OF_TURN, chat_template.END_OF_TURN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(template_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, model_max_length=DefaultModelConfig.max_positions
    )
    return chat_template.install(tokenizer, chat_template.COMPACT_CHAT_TEMPLATE, call_tokens=True)


def build(config: DefaultModelConfig = DefaultModelConfig()) -> tuple[Any, Any]:
    """(model, tokenizer), freshly initialised from ``config.seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            num_key_value_heads=config.heads,
            max_position_embeddings=config.max_positions,
            rope_theta=10_000.0,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            attn_implementation="sdpa",
        )
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save(path: str | Path, config: DefaultModelConfig = DefaultModelConfig()) -> Path:
    """Build and ``save_pretrained`` the default model and tokenizer into ``path``."""
    path = Path(path)
    model, tokenizer = build(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "itl_default_model.json").write_text(json.dumps(asdict(config)))
    return path
