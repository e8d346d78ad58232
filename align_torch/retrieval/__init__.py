"""Embedding collections at scale: the embeddings folder (clip-retrieval's layout), partitions, resume and
torchrun ranks; see layout.py for the folder itself."""
