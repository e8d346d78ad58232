"""Evaluation the field can cite: zero-shot, retrieval recall@K, k-NN and linear-probe protocols, open_clip-style
entry points and the CLIP_benchmark loader (align_torch.evaluate.clip_benchmark)."""

from .classification import (
    ClassFolder,
    ClassificationResult,
    EmbeddedFolder,
    KnnResult,
    embed_class_folder,
    knn_accuracy,
    knn_scores,
    linear_probe_accuracy,
    linear_probe_scores,
    read_class_folder,
    train_val_features,
    zero_shot_accuracy,
)
from .knn import knn_predict
from .linear_probe import LinearProbe, LinearProbeResult, fit_logistic, linear_probe
from .open_clip import create_model_and_transforms, get_tokenizer
from .retrieval import RetrievalResult, read_karpathy, recall_at_k, retrieval_recall

__all__ = [
    "ClassFolder",
    "ClassificationResult",
    "EmbeddedFolder",
    "KnnResult",
    "LinearProbe",
    "LinearProbeResult",
    "RetrievalResult",
    "create_model_and_transforms",
    "embed_class_folder",
    "fit_logistic",
    "get_tokenizer",
    "knn_accuracy",
    "knn_predict",
    "knn_scores",
    "linear_probe",
    "linear_probe_accuracy",
    "linear_probe_scores",
    "read_class_folder",
    "read_karpathy",
    "recall_at_k",
    "retrieval_recall",
    "train_val_features",
    "zero_shot_accuracy",
]
