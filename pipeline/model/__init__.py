"""What a model is: the Transformer of the study (transformer.py), the objectives it is trained with, and pretrained models from Hugging Face (hf.py) read into the same shape."""
