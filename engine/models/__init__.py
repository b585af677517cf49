"""Model definitions. One family for now: Llama (Llama 2/3, Mistral, Qwen2, Qwen3)."""
