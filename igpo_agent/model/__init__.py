"""The policy model: loading, LoRA adapters, the policy wrapper, prompts."""
