"""Inputs exactly as transformers makes them: the processor, the BERT tokenizer, image processing and the
zero-shot prompt templates."""
