"""Files -> (config, tensors) and back: the native and Hugging Face layouts, the one key map, the Hub and the
checks on a checkpoint's JSON files. Strict, code-free, atomic; nothing here imports the model class."""
