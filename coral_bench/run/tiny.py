"""A tiny random target (2 layers, hidden 64) and a byte-level tokenizer with SmolLM2's chat template.

Built in milliseconds from code: tests and the CLI's ``--target tiny-random`` never download anything.
Token ids: 0 = ``<|endoftext|>``, 1 = ``<|im_start|>`` (BOS), 2 = ``<|im_end|>`` (EOS = pad), as in
SmolLM2; then the 256 byte symbols.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB = 320  # 3 specials + 256 bytes, padded to a multiple of 64


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte) with SmolLM2's special tokens and chat template."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
    )
    tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tok


def tiny_config(**overrides) -> LlamaConfig:
    """A 2-layer Llama config shaped like SmolLM2 in miniature (GQA, tied embeddings)."""
    settings = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rope_theta=10000.0,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> LlamaForCausalLM:
    """A random tiny Llama. Weights are scaled up so greedy outputs vary instead of repeating one token."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = "sdpa"
    return _randomised(LlamaForCausalLM(config), dtype)


def tiny_qwen2_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """A random tiny Qwen2 (the family of Qwen2.5): the same shape as :func:`tiny_model`, with Qwen2's
    q/k/v biases; it shares the tiny tokenizer, so tests run both families on the same prompts."""
    torch.manual_seed(seed)
    config = Qwen2Config(**tiny_config().to_diff_dict() | {"model_type": "qwen2"})
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # zero at init: random, so that they take part in every forward
                p.normal_(0.0, 0.25)
    return _randomised(model, dtype)


def tiny_cycling_model(tokenizer, cycle: str = "abcd", layer_scale: float = 0.03,
                       dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    """A tiny target that is predictable: its greedy answer repeats ``cycle`` (distinct characters).

    Its LM head maps each token's embedding to a chosen successor (a random one for every token
    outside the cycle) and its layers are damped, not removed (attention and the KV cache still shift
    the logits a little). Acceptance tests build drafters that agree with it: prompt lookup finds its
    drafts in what it already wrote, and an EAGLE drafter that passes the embedding through predicts
    the successor (tests/test_acceptance.py).
    """
    from coral_bench.run.chat import render

    model = tiny_model(seed=0, dtype=dtype, tie_word_embeddings=False)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        successor = torch.randperm(embed.shape[0], generator=torch.Generator().manual_seed(1))
        ids = tokenizer(cycle, add_special_tokens=False)["input_ids"]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the cycle {cycle!r} must not repeat a token")
        for a, b in zip(ids, ids[1:] + ids[:1]):
            successor[a] = b
        successor[render(tokenizer, ["x"], [], None)[-1]] = ids[0]  # the generation prompt leads into it
        head = torch.zeros_like(model.lm_head.weight).index_add_(0, successor, embed)
        model.lm_head.weight.copy_(3.0 * head)  # logits[successor[t]] ∝ <embed[t], h>
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(layer_scale)
            layer.mlp.down_proj.weight.mul_(layer_scale)
    return model


def _randomised(model, dtype: torch.dtype):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return model.to(dtype).eval()
