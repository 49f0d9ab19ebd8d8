"""Stage 1, `python -m pipeline.prepare`: the corpus split (corpus.py) and the tokenizer trained on it
(tokenizer.py); `python -m pipeline.prepare.fetch` downloads the default corpus."""
