"""LoRA training, GGUF export, evaluation and the promotion gate for domain adapters."""
