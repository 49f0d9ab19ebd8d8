"""Stage 3, `python -m pipeline.dump`: each layer's token states of one model on the probe sentences.
The format (format.py, what the analyses read), the writers (writer.py), the dump of a trained model or
the step-0 control (stage.py) and of a pretrained Hugging Face model (`python -m pipeline.dump.pretrained`)."""
