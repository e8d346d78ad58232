"""Fine-tuning ALIGN on image-caption data, one process or DDP (`torchrun ... -m align_torch finetune`).

from align_torch.train import TrainConfig, Trainer
Trainer(TrainConfig(model="kakaobrain/align-base", train="pairs.csv", out="run")).fit()
"""

from .config import TrainConfig
from .guards import Interrupted, NonFiniteLossError, UnreadableDataError
from .lock import RunLockedError
from .modes import freeze_batchnorm, lock_tower, prepare_model
from .state import TrainCheckpointError
from .trainer import StepRecord, Trainer, TrainResult

__all__ = [
    "Interrupted",
    "NonFiniteLossError",
    "RunLockedError",
    "StepRecord",
    "TrainCheckpointError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "UnreadableDataError",
    "freeze_batchnorm",
    "lock_tower",
    "prepare_model",
]
