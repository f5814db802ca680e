"""Data sets (GLUE, LLM-Adapters reasoning) and the batching pipeline."""
