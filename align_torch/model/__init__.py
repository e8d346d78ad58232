"""The paper's recipe and nothing else: configs, EfficientNet, BERT, the joint model, the loss, input checks.
Nothing here imports another folder of the package, except the joint model's loading and saving, which call
down into align_torch.checkpoint. Start reading at align.py."""
