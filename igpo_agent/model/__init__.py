"""The policy model: loading, the KV cache, LoRA adapters, the policy wrapper, prompts."""
