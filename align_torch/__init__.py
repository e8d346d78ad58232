"""align_torch: ALIGN (EfficientNet + BERT) in native PyTorch."""
