"""Looking inside a model it is handed: exact similarity maps and gradient maps (similarity, heatmap), token
attributions, faithfulness curves, hooks on named sites (capture, patch, ablations, activation patching), CKA and
per-site features for comparing models, figures drawn with PIL, and parameter/FLOP summaries. (Every hidden
state in one call is the model's own `forward_intermediates`, in align_torch.model.intermediates.)"""
