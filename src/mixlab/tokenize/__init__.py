"""Tokenizer training, evaluation, and corpus -> token shards.

`run_tokenizer_train` (train.py), `run_tokenizer_eval` (evaluate.py), `run_tokenize`
(corpus.py); the shard layout and the training reader `domain_stream` are in shards.py.
"""
