"""AlignModel: the two towers, the text projection, the temperature and the logits. The only file that
joins the image and text towers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.hub import resolve_model_dir
from ..checkpoint.weights import compare_state_dicts, load_state_dict, read_checkpoint, save_native
from .bert import Bert, TextOutput, init_linear_and_norms
from .config import AlignConfig
from .efficientnet import EfficientNet, VisionOutput
from .hf_image import HFImageTower
from .hf_text import HFTextTower
from .input_checks import check_batches, check_kwargs, check_pixels, check_text
from .intermediates import forward_intermediates
from .loss import contrastive_loss, sigmoid_loss
from .outputs import TowerRequest, TupleOutput, current_request, tower_request


@dataclass
class AlignOutput(TupleOutput):
    """What `AlignModel.forward` returns; the field names are transformers' `AlignOutput`'s."""

    logits_per_image: torch.Tensor | None  # (B_image, B_text)
    logits_per_text: torch.Tensor | None  # (B_text, B_image)
    text_embeds: torch.Tensor | None  # (B_text, projection_dim), L2-normalised
    image_embeds: torch.Tensor | None  # (B_image, num_features), L2-normalised
    loss: torch.Tensor | None = None
    # Each tower's output (last_hidden_state, pooler_output, hidden_states[, attentions]) as transformers gives
    # it: filled when forward is called with output_hidden_states, output_attentions or return_dict=False, so
    # the default call holds only the embeddings.
    text_model_output: TextOutput | None = None
    vision_model_output: VisionOutput | None = None

    def to_tuple(self) -> tuple:
        """transformers' `return_dict=False` order: (loss,) logits_per_image, logits_per_text, text_embeds,
        image_embeds, then each tower's output as a tuple (text first)."""
        head = (self.loss, self.logits_per_image, self.logits_per_text, self.text_embeds, self.image_embeds)
        towers = (self.text_model_output, self.vision_model_output)
        return tuple(v for v in head if v is not None) + tuple(t.to_tuple() for t in towers if t is not None)

    def __getitem__(self, key: str) -> torch.Tensor | None:
        if not isinstance(key, str):
            raise TypeError("index AlignOutput by field name, e.g. outputs['logits_per_image']")
        return getattr(self, key)


class AlignModel(nn.Module):
    """ALIGN: EfficientNet image tower + BERT text tower in one embedding space.

    Call it like transformers' AlignModel: `model(input_ids=..., attention_mask=..., pixel_values=...)`.
    """

    def __init__(self, config: AlignConfig | None = None):
        super().__init__()
        config = config or AlignConfig()
        self.config = config
        # ALIGN's EfficientNet, or a transformers vision encoder (`--image-tower hf:...`) recorded in the config.
        self.vision_model = (
            EfficientNet(config.vision)
            if config.hf_image_config is None
            else HFImageTower(config.hf_image_config, config.image_pooling)
        )
        # The native BERT, or a transformers encoder (`--text-tower hf:...`) recorded in the config.
        self.text_model = Bert(config.text) if config.hf_text_config is None else HFTextTower(config.hf_text_config)
        # ALIGN has no image projection: the pooled map *is* the embedding. Only a config whose
        # projection_dim differs from the tower's width gets one, so align-base keeps its checkpoint's keys; a
        # swapped-in tower always gets one (its features were never trained to live in the text's space).
        self.image_projection = (
            nn.Linear(self.vision_model.num_features, config.projection_dim)
            if self.vision_model.num_features != config.projection_dim or config.image_tower is not None
            else None
        )
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature_init)))
        # SigLIP's learnable logit bias, only for a config trained with the sigmoid loss (align-base has none).
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(config.logit_bias_init))) if config.loss == "sigmoid" else None
        )
        self.load_report = None  # set by from_pretrained(strict=False)
        # encode_text runs the text tower padding-free (Bert's `packed`) in eval mode; fuse_for_inference turns
        # it on after checking that this model's layers give the same embeddings that way.
        self.pack_text = False

    # --- features -------------------------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, projection_dim) image embeddings."""
        check_pixels(self.config.vision, pixel_values)
        request = current_request()
        if request is None:
            return self.project_image(self.vision_model(pixel_values).pooler_output, normalize)  # (B, P)
        request.vision = self.vision_model(pixel_values, output_hidden_states=request.hidden_states)
        return self.project_image(request.vision.pooler_output, normalize)  # (B, P)

    def project_image(self, pooled: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, C) pooled image features -> (B, projection_dim); the projection is the identity for ALIGN's
        own configs. `normalize`: unit length."""
        x = pooled if self.image_projection is None else self.image_projection(pooled)
        return F.normalize(x, dim=-1) if normalize else x

    def project_text(self, pooled: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, D) pooled text states -> (B, projection_dim). `normalize`: unit length."""
        x = self.text_projection(pooled)
        return F.normalize(x, dim=-1) if normalize else x

    def pool_text(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) last hidden states -> (B, D): the [CLS] state (ALIGN) or, with `TextConfig.pooling`
        "mean", the mean over the tokens the attention mask keeps."""
        if self.config.text.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        # The fast path may have cut trailing padding off the hidden states; the mask's head still lines up.
        keep = attention_mask[:, : hidden.shape[1], None].to(hidden.dtype)  # (B, T, 1)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, projection_dim): the projected pooled last hidden state ([CLS] for ALIGN,
        not the BERT pooler). Without an attention mask, the pad id marks the padding (as open_clip's HF towers)."""
        check_text(self.config.text, input_ids, attention_mask, token_type_ids)
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text.pad_token_id).long()  # (B, T)
        packed = (
            self.pack_text
            and self.config.text.pooling == "cls"
            and not self.training
            and not torch.compiler.is_compiling()  # packing depends on the mask's values
            and bool(attention_mask[:, 0].all())  # right-padded texts only
        )
        extra = {"packed": True} if packed else {}  # a swapped-in text tower need not know the argument
        request = current_request()  # a flagged forward's: the full-length padded path, and its output kept
        if request is not None:
            extra = request.text_kwargs()
        out = self.text_model(input_ids, attention_mask, token_type_ids, **extra)
        if request is not None:
            request.text = out
        h = out.last_hidden_state  # (B, T | 1, D)
        return self.project_text(self.pool_text(h, attention_mask), normalize)  # (B, P)

    def get_image_features(self, pixel_values: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor:
        """transformers' name: un-normalised (B, projection_dim) image embeddings."""
        check_kwargs("get_image_features", kwargs)
        return self.encode_image(pixel_values)

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        """transformers' name: un-normalised (B, projection_dim) text embeddings."""
        check_kwargs("get_text_features", kwargs)
        return self.encode_text(input_ids, attention_mask, token_type_ids)

    def logits(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised (B_text, P) and (B_image, P) -> (B_text, B_image) cosine similarity / temperature, plus the
        logit bias of a sigmoid-loss model (so that sigmoid(logits) is its match probability)."""
        logits = text_embeds @ image_embeds.t() / self.temperature
        return logits if self.logit_bias is None else logits + self.logit_bias

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> AlignOutput | tuple:
        """Image-text logits and normalised embeddings; with `return_loss`, the config's loss (ALIGN's contrastive
        loss, or SigLIP's sigmoid loss).

        transformers' flags: `output_hidden_states` / `output_attentions` fill `text_model_output` and
        `vision_model_output` with every hidden state (and the text attention probabilities), full length and
        padded as the input was; `return_dict=False` returns `AlignOutput.to_tuple()`. The embeddings are the
        same either way: the towers' own forward captures the states (see align_torch.model.outputs).
        """
        check_kwargs("forward", kwargs)
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "AlignModel needs both input_ids and pixel_values; for one modality use "
                "get_text_features / get_image_features (or encode_text / encode_image)"
            )
        # Both inputs are checked before either tower runs (encode_* check their own again: two cheap reductions).
        check_text(self.config.text, input_ids, attention_mask, token_type_ids)
        check_pixels(self.config.vision, pixel_values)
        if return_loss:
            check_batches(len(input_ids), len(pixel_values))
        flagged = bool(output_hidden_states) or bool(output_attentions) or return_dict is False
        if flagged and torch.compiler.is_compiling():
            raise NotImplementedError(
                "output_hidden_states / output_attentions / return_dict=False run eagerly; compile the towers "
                "(align_torch.inference.towers) or call forward_intermediates outside torch.compile"
            )
        request = tower_request(bool(output_hidden_states), bool(output_attentions)) if flagged else None
        with request or contextlib.nullcontext() as asked:
            image_embeds = self.encode_image(pixel_values, normalize=True)
            text_embeds = self.encode_text(input_ids, attention_mask, token_type_ids, normalize=True)
        logits_per_text = self.logits(text_embeds, image_embeds)
        loss = None
        if return_loss:
            loss = (
                sigmoid_loss(logits_per_text)
                if self.config.loss == "sigmoid"
                else contrastive_loss(logits_per_text, self.config.label_smoothing)
            )
        out = AlignOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            loss=loss,
        )
        if asked is not None:
            out.text_model_output, out.vision_model_output = self._tower_outputs(asked)
        return out.to_tuple() if return_dict is False else out

    def _tower_outputs(self, asked: TowerRequest) -> tuple[TextOutput, VisionOutput]:
        """What the towers returned inside encode_text / encode_image, with BERT's pooled output added as
        transformers computes it (tanh of the pooler on [CLS]; ALIGN's own embedding never reads it)."""
        if asked.text is None or asked.vision is None:
            missing = [
                name for name, out in (("encode_text", asked.text), ("encode_image", asked.vision)) if out is None
            ]
            raise RuntimeError(
                f"{type(self).__name__}.{' and '.join(missing)} did not run the model's tower, so there are no tower "
                "outputs to return; call super()'s method in an override, or use forward_intermediates"
            )
        text = asked.text
        if isinstance(text, TextOutput) and isinstance(self.text_model, Bert):
            pooled = torch.tanh(self.text_model.pooler(text.last_hidden_state[:, 0]))  # (B, D)
            text = dataclasses.replace(text, pooler_output=pooled)
        return text, asked.vision

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """transformers' count: every parameter once, or only those requiring grad, optionally without the
        nn.Embedding weights."""
        embeddings = (
            {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        )
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in embeddings
        )

    # Hidden states of both towers, text attention probabilities and the embeddings, with selection and early
    # stopping: the function in align_torch.model.intermediates, as a method.
    forward_intermediates = forward_intermediates

    # --- training helpers -----------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_model.set_grad_checkpointing(enable)
        self.text_model.set_grad_checkpointing(enable)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Each tower as its paper's code initialises it (EfficientNet.init_weights, Bert.init_weights), the
        projections as BERT's linear layers (normal(0.02), bias 0) and the temperature at the config's value.
        `AlignModel(config)` itself keeps PyTorch's defaults; the starter model (`align-torch init`) uses this."""
        self.vision_model.init_weights()
        self.text_model.init_weights()
        for projection in (self.image_projection, self.text_projection):
            if projection is not None:
                init_linear_and_norms(projection)
        self.temperature.fill_(float(self.config.temperature_init))

    # --- loading and saving ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: AlignConfig | None = None,
        strict: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        **kwargs: object,
    ) -> AlignModel:
        """Load a native folder, a Hugging Face-layout folder (converted in memory) or a Hub repo id.

        `config` overrides the checkpoint's (a changed architecture); with `strict=False` what matches is
        loaded and `model.load_report` lists what did not. The model is returned in eval mode.
        """
        dtype = dtype or kwargs.pop("torch_dtype", None)  # transformers' spelling
        if kwargs:
            raise TypeError(f"from_pretrained got unexpected arguments: {sorted(kwargs)}")
        folder = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir)
        ckpt_config, sd = read_checkpoint(folder)
        config = config or ckpt_config
        # Build on the meta device and adopt the checkpoint's tensors: no random init that is then overwritten,
        # no copy. Only when every tensor fits exactly; otherwise initialise for real and copy what fits.
        with torch.device("meta"):
            model = cls(config)
        own = model.state_dict()
        report = compare_state_dicts(own, sd)
        # A transformers tower may keep non-persistent buffers (position ids) no checkpoint holds: built for real.
        adoptable = config.hf_text_config is None and config.hf_image_config is None
        if adoptable and report.ok and all(sd[k].dtype == v.dtype for k, v in own.items()):
            model.load_state_dict(sd, assign=True)
        else:
            model = cls(config)
            report = load_state_dict(model, sd, strict=strict)
        model.load_report = report
        if not report.ok:
            warnings.warn(f"{name_or_path}: partial load (strict=False):\n{report}", stacklevel=2)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = True) -> None:
        """Write the native format (config.json + model.safetensors) atomically. An existing non-empty folder
        is replaced only if it is a checkpoint (and `overwrite`); any other is refused."""
        save_native(self, save_directory, overwrite=overwrite)
