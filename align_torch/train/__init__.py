"""Fine-tuning ALIGN on image-caption data, one process or DDP (`torchrun ... -m align_torch.train`).

from align_torch.train import TrainConfig, Trainer
Trainer(TrainConfig(model="kakaobrain/align-base", train="pairs.csv", out="run")).fit()
"""

from .config import TrainConfig
from .modes import freeze_batchnorm, lock_tower, prepare_model
from .trainer import NonFiniteLossError, StepRecord, Trainer, TrainResult

__all__ = [
    "NonFiniteLossError",
    "StepRecord",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "freeze_batchnorm",
    "lock_tower",
    "prepare_model",
]
