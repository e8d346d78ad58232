"""Looking inside a model it is handed: similarity heatmaps and parameter/FLOP summaries. (Every hidden state in
one call is the model's own `forward_intermediates`, in align_torch.model.intermediates.)"""
