"""The paper's recipe and nothing else: configs, EfficientNet, BERT, the joint model, the loss, input checks.
Two files import from outside this folder, and only downward: align.py, whose loading and saving call into
align_torch.checkpoint (hub.py resolves a folder or Hub id, weights.py reads, loads, compares and saves: files <->
config and tensors; checkpoint/ reads into model/config.py and never imports the model class), and loss.py, which
gathers rows over ranks through align_torch.util.distributed (torch only). tests/project/test_imports.py holds
this list. Start reading at align.py."""
