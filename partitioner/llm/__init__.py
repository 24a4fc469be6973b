"""LLM serving: workloads of prompts and outputs, the prefill and decode phases, and plans priced per token."""
