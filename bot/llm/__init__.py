"""The model runtimes: embedded llama.cpp (with per-request LoRA) and OpenAI-compatible servers."""
