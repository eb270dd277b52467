"""Parsit trainer: DeepSpeed training of LLaVA-style models on Parsit shards."""
