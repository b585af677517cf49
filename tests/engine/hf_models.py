"""Random-weight transformers models saved as HF directories, and their greedy outputs."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=256,
            max_position_embeddings=1024, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
            initializer_range=0.1)

# name -> (config class, fields): GQA groups 1, 2, 3, 4; tied and untied; each architecture.
MODELS = {
    "llama-g2": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-g1-tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 256})),
    "qwen2-g3": ("Qwen2Config", dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3-g4": ("Qwen3Config", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                                     tie_word_embeddings=True)),
    "mistral-g2": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                                         tie_word_embeddings=False)),
}


# Models for tensor parallelism over 2 ranks: KV heads split (2 over 2 ranks), KV heads fewer than
# the ranks (1, replicated), a vocabulary that does not split evenly (255), tied and untied.
TP_MODELS = {
    "llama-kv2-odd-vocab": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, vocab_size=255,
                                                tie_word_embeddings=False)),
    "qwen2-kv1-tied": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
}


def build_hf_model(name: str, root: Path) -> tuple[Path, transformers.PreTrainedModel]:
    cls_name, fields = {**MODELS, **TP_MODELS}[name]
    config = getattr(transformers, cls_name)(**{**BASE, **fields})
    config.architectures = [cls_name.replace("Config", "ForCausalLM")]
    torch.manual_seed(hash(name) % 2**31)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith(".bias") or "norm" in pname:
                param.add_(torch.randn_like(param) * 0.1)  # exercise biases and norm weights
    path = root / name
    model.save_pretrained(path)
    model.generation_config.eos_token_id = None
    return path, model


def hf_greedy(model: transformers.PreTrainedModel, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    outs = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
        outs.append(gen[0, len(prompt):].tolist())
    return outs
