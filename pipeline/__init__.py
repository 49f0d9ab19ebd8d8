"""pipeline: makes representations (corpus, tokenizer, models, training, activation dumps)."""
