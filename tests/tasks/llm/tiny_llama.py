"""A tiny Llama with random weights, its tokenizer and a GGUF writer, built offline.

Shared by the language-model tests: the model has the real architecture
(``LlamaForCausalLM``, tied embeddings, grouped-query attention) at a size that runs in
milliseconds, and its byte-level BPE tokenizer is trained here on :func:`tiny_text`, so
nothing is downloaded.  :func:`write_gguf` writes it as llama.cpp would, so the GGUF
loader is exercised on a real file.
"""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

TINY_TOPICS = ("assert", "break", "continue", "del", "for", "global", "if", "pass", "return", "while")
VOCAB_SIZE = 384
BOS = "<|endoftext|>"


def tiny_text() -> str:
    """About 8 KB of English: a few of the standard library's help topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in TINY_TOPICS)


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained on :func:`tiny_text`, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([tiny_text()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=BOS)


def tiny_llama(seed: int = 0, hidden_size: int = 64, intermediate_size: int = 128) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a 2-block Llama (hidden 64, 4 heads, 2 kv heads, context 128), eval mode.

    ``hidden_size=256`` gives rows that llama.cpp's K types (super-blocks of 256) hold.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    return model, tokenizer


def one_line(error: Any) -> str:
    """The message of a raised HaqError (``pytest.ExceptionInfo``), asserted to be a single line."""
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary reordering of q/k rows (transformers undoes it on load)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ffn_norm"}


def write_gguf(path: Path, model: Any, tokenizer: Any) -> Path:
    """Write ``model`` and ``tokenizer`` as a float32 llama GGUF (tied: no ``output.weight``)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token == BOS else gguf.TokenType.NORMAL for token in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in model.state_dict().items():
        array = tensor.detach().to(torch.float32).numpy()
        if name == "lm_head.weight":
            continue  # tied to the embedding
        if name == "model.embed_tokens.weight":
            writer.add_tensor("token_embd.weight", array)
        elif name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", array)
        else:
            _, _, block, rest = name.split(".", 3)
            role = rest.rsplit(".", 1)[0]
            if role == "self_attn.q_proj":
                array = _permute(array, heads)
            elif role == "self_attn.k_proj":
                array = _permute(array, kv_heads)
            writer.add_tensor(f"blk.{block}.{_GGUF_NAMES[role]}.weight", np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_wheel(directory: Path, distribution: str, version: str, member: str, gguf_file: Path) -> Path:
    """A wheel-shaped zip (``name-version-py3-none-any.whl``) holding ``gguf_file`` at ``member``."""
    wheel = directory / f"{distribution.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(gguf_file, member)
        archive.writestr(f"{distribution.replace('-', '_')}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    return wheel


TRAIN_WINDOW = 32


@functools.lru_cache(maxsize=2)
def _trained_state(seed: int, steps: int) -> dict[str, torch.Tensor]:
    model, tokenizer = tiny_llama(seed)
    ids = torch.tensor(tokenizer(tiny_text(), add_special_tokens=False)["input_ids"])
    windows = ids[: ids.numel() // TRAIN_WINDOW * TRAIN_WINDOW].reshape(-1, TRAIN_WINDOW)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = windows[torch.randint(0, windows.shape[0], (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def trained_tiny_llama(seed: int = 0, steps: int = 150) -> tuple[Any, Any]:
    """:func:`tiny_llama` trained for ``steps`` Adam steps on :func:`tiny_text` (trained once per process).

    A random model's perplexity is about its vocabulary size whatever its weights,
    so quantizing it changes nothing measurable; trained on the text it is scored
    on, its perplexity is near 5 and each layer's bits matter.
    """
    model, tokenizer = tiny_llama(seed)
    model.load_state_dict(_trained_state(seed, steps))
    return model.eval(), tokenizer
