"""The paper's recipe and nothing else: configs, EfficientNet, BERT, the joint model, the loss, input checks.
Two imports leave this folder: the joint model's loading and saving call down into align_torch.checkpoint (files
-> config and tensors), and the loss gathers rows over ranks through align_torch.util.distributed (torch only).
Start reading at align.py."""
