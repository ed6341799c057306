"""Tokenizer training, evaluation, and corpus -> token shards."""
