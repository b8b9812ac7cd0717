"""LLaVA, composed: encode images, merge them into the sentence, run the language model, pick tokens.

    pixel_values ─ vision_tower ─ select_features ─ multi_modal_projector ─┐ image_features [N, L, D]
    input_ids ─ embed_tokens ───────────────────────────────────────────── merge ─ language_model ─ lm_head ─ logits

``LlavaModel`` holds the config and the parameters; every step is a function of the module named after
it (clip.py or siglip.py, projector.py, merge.py, llama.py), and generation's loop is generate.py's. The public
methods (``encode_image``, ``forward``, ``generate``, ``generate_tokens``, ``stream``) are the edge where
arrays enter: they check and convert their inputs once, with one clear error, and everything they call
trusts its arguments. ``step`` is the language model's forward as generation's loop calls it.

Shape letters: B = batch, T = new positions, Tk = all positions incl. cached ones, N = images,
C = channels, S = image side, L = image tokens per image, D = hidden size, V = vocab.
"""

from __future__ import annotations

import functools

import numpy as np

from . import backend, clip, generate, siglip, training
from .attention import ATTENTION_FUNCTIONS, by_query_blocks
from .clip import select_features
from .config import LlavaConfig
from .fused import FUSED, PLAIN
from .kv_cache import KVCache
from .llama import embed_tokens, language_model, lm_head
from .loss import cross_entropy
from .merge import merge_image_features
from .projector import multi_modal_projector
from .rope import inverse_frequencies
from .static_step import StaticDecodeStep
from .trace import record

COMPUTE_DTYPES = ("float32", "float16")
ATTN_IMPLEMENTATIONS = tuple(ATTENTION_FUNCTIONS)  # "eager" (the plain attention, the reference) or "tiled"
VISION_TOWERS = {"clip_vision_model": clip.vision_tower, "siglip_vision_model": siglip.vision_tower}


class LlavaModel:
    """A loaded LLaVA: ``config`` (LlavaConfig), ``params`` (nested dict of arrays named like the checkpoint's
    modules), the ``device`` ("cpu" or "cuda"), the compute ``dtype``, the special tokens generation stops and pads
    with (``generation_defaults``), and ``attention``, the function both towers attend with: the plain
    ``scaled_dot_product_attention`` ("eager", the default; its fused twin with ``fused_kernels``; on the CPU called
    by ``by_query_blocks``, which skips the keys a block of queries may not see) or ``tiled_attention`` ("tiled").
    Any function of (q, k, v, mask) may be set there, e.g. ``functools.partial(tiled_attention, block_size=32)``
    or the plain function itself, the whole matrix at once. ``fused_kernels``: the language model's
    elementwise chains (RMSNorm, SwiGLU's gating, RoPE; ``kernels``) and eager attention's softmax (``attention``,
    both towers') as fused kernels (fused.FUSED: the same numbers, fewer kernel launches on a GPU) instead of the
    plain functions (fused.PLAIN, the default). ``cuda_graphs``: generation's decode steps run on fixed shapes
    (static_step.py), recorded once as a CUDA graph and replayed on CuPy; on NumPy the same fixed-shape step runs
    unrecorded. Both off by default: the plain functions and the plain step are the reference."""

    def __init__(
        self,
        config: LlavaConfig,
        params: dict,
        device: str = "cpu",
        dtype: str = "float32",
        generation_defaults: generate.GenerationDefaults | None = None,
        attn_implementation: str = "eager",
        fused_kernels: bool = False,
        cuda_graphs: bool = False,
    ):
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
        if not isinstance(fused_kernels, bool):
            raise ValueError(f"fused_kernels must be True or False, got {fused_kernels!r}")
        if not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        self.config = config
        self.generation_defaults = generation_defaults or generate.generation_defaults(config)
        self.params = params
        self.device = backend.check_device(device)
        self.dtype = np.dtype(dtype)
        self.xp = backend.namespace(device)
        self.attn_implementation = attn_implementation
        self.fused_kernels = fused_kernels
        self.kernels = FUSED if fused_kernels else PLAIN  # the language model's elementwise chains: fused.py
        # (q, k, v, mask) -> out. "eager" is the kernel set's attention (PLAIN's the plain function of attention.py,
        # FUSED's the same with its softmax fused), on the CPU a block of queries at a time, each block against only
        # the keys it may see (attention.by_query_blocks: the same numbers to float32 rounding, about half the work of
        # a causal prefill; on a GPU, where that has not been measured, the whole matrix at once). "tiled" keeps its
        # own loop and online softmax.
        if attn_implementation == "tiled":
            self.attention = ATTENTION_FUNCTIONS["tiled"]
        elif self.xp is np:
            self.attention = functools.partial(by_query_blocks, attention=self.kernels.attention)
        else:
            self.attention = self.kernels.attention
        self.cuda_graphs = cuda_graphs  # generation's decode steps on fixed shapes, recorded on a GPU: static_step.py
        text = config.text
        self.inv_freq = inverse_frequencies(self.xp, text.head_dim, text.rope_theta, text.rope_scaling)  # [hd/2]

    # -- the two halves ------------------------------------------------------------------------------

    def encode_image(self, pixel_values, trace=None):
        """Images to the language model's "words": CLIP features of the selected layer(s), projected.

        pixel_values: [N, C, S, S] (NumPy or device array)  ->  image_features [N, L, D] (device array)
        """
        return self._encode_image(self._checked_pixel_values(pixel_values), trace)

    def _encode_image(self, pixel_values, trace=None):
        cfg = self.config
        features = self._vision_features(pixel_values, trace)  # [N, L, Dv']
        image_features = multi_modal_projector(
            self.params["multi_modal_projector"], features, cfg.projector_hidden_act
        )  # [N, L, D]
        record(trace, "multi_modal_projector", image_features)
        return image_features

    def _vision_features(self, pixel_values, trace=None):
        """The vision tower's selected features, the projector's input.  [N, C, S, S] -> [N, L, Dv'] (device)"""
        cfg = self.config
        x = self.xp.asarray(pixel_values, dtype=self.dtype)  # [N, C, S, S]
        record(trace, "pixel_values", x)
        vision_tower = VISION_TOWERS[cfg.vision.model_type]  # CLIP (llava-1.5) or SigLIP (llava-interleave)
        hidden_states = vision_tower(
            self.params["vision_tower"], x, cfg.vision, cfg.vision_layers_needed, trace, attention=self.attention
        )  # (n_layers + 1) x [N, Np (+ 1 CLS for CLIP), Dv]
        features = select_features(
            hidden_states, cfg.vision_feature_index, cfg.vision_feature_select_strategy
        )  # [N, L, Dv']
        record(trace, "vision_features", features)
        return features

    def forward(self, input_ids, pixel_values=None, attention_mask=None, position_ids=None, cache=None, trace=None):
        """Logits for every position, as LlavaForConditionalGeneration.forward gives them.

        input_ids: [B, T] token ids (each <image> already expanded to L image tokens);
        pixel_values: [N, C, S, S] or None, one entry per image, in the order their tokens appear;
        attention_mask: [B, T] (or [B, Tk] with a cache), 1 for real tokens, 0 for padding;
        position_ids: [B, T], default ``cache.length + arange(T)`` (as Transformers' forward);
        cache: a KVCache from ``new_cache`` to continue from (prefill, then one-token steps);
        trace: None, a dict or a callable ``(name, array)`` that receives named intermediates.
        Returns logits [B, T, V] as a NumPy array.
        """
        logits = self.forward_device(input_ids, pixel_values, attention_mask, position_ids, cache, trace)
        return backend.to_numpy(logits)

    def forward_device(
        self,
        input_ids,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        trace=None,
        last_only=False,
    ):
        """``forward`` that leaves the logits on the device; ``last_only`` computes lm_head for the
        last position only ([B, 1, V])."""
        input_ids, attention_mask, position_ids = self._checked_text_inputs(
            input_ids, attention_mask, position_ids, cache
        )
        pixel_values = self._checked_images(input_ids, pixel_values, cache)
        return self._logits(input_ids, attention_mask, position_ids, cache, pixel_values=pixel_values, trace=trace,
                            last_only=last_only)  # fmt: skip

    def step(self, input_ids, attention_mask, position_ids, cache, image_features=None):
        """The language model's forward for new positions, as generation's loop calls it: NumPy ids [B, T],
        attention_mask [B, Tk], position_ids [B, T] (checked by the caller), the cache, and the image features
        of the prompt's image tokens (prefill only)  ->  logits of each row's last position [B, V] (device)."""
        logits = self._logits(
            input_ids, attention_mask, position_ids, cache, image_features=image_features, last_only=True
        )
        return logits[:, -1]  # [B, V]

    def _logits(
        self, input_ids, attention_mask, position_ids, cache, image_features=None, pixel_values=None, trace=None,
        last_only=False,
    ):  # fmt: skip
        """Embed, merge the images in (their features, or encoded here from checked pixel_values), run the
        decoder layers and lm_head.  -> [B, T or 1, V]"""
        xp, cfg = self.xp, self.config
        input_ids = xp.asarray(input_ids)  # [B, T]
        embeds = embed_tokens(self.params["language_model"]["embed_tokens"]["weight"], input_ids)  # [B, T, D]
        embeds = embeds.astype(self.dtype, copy=False)
        record(trace, "language_model.embed_tokens", embeds)
        if pixel_values is not None:
            image_features = self._encode_image(pixel_values, trace)  # [N, L, D]
        if image_features is not None:
            embeds = merge_image_features(embeds, input_ids, image_features, cfg.image_token_index)  # [B, T, D]
        record(trace, "inputs_embeds", embeds)
        attention_mask, position_ids = xp.asarray(attention_mask), xp.asarray(position_ids)  # [B, Tk], [B, T]
        hidden = language_model(
            self.params["language_model"], embeds, attention_mask, position_ids, self.inv_freq, cfg.text, cache, trace,
            attention=self.attention, kernels=self.kernels,
        )  # [B, T, D]  # fmt: skip
        if last_only:
            hidden = hidden[:, -1:]  # [B, 1, D]
        logits = lm_head(self.params["lm_head"]["weight"], hidden)  # [B, T, V]
        record(trace, "lm_head", logits)
        return logits

    # -- training (training.py: the loss, the backward; optim.py: AdamW) --------------------------------

    def loss(self, input_ids, pixel_values=None, attention_mask=None, labels=None):
        """The loss LlavaForConditionalGeneration returns for ``labels``: the mean next-token cross-entropy over
        the positions whose label is not -100 (position t's logits against labels[t + 1]). -> float

        input_ids, attention_mask, pixel_values: as ``forward`` takes them; labels: [B, T] integers as
        Transformers takes them, input_ids with -100 where nothing is learnt (the prompt, the image tokens, the
        padding: only the answers count, as in LLaVA's training).
        """
        input_ids, attention_mask, labels, features = self._checked_training_inputs(
            input_ids, pixel_values, attention_mask, labels
        )
        logits, _ = training.forward(self.params, self.config, input_ids, attention_mask, features, self.inv_freq)
        return cross_entropy(logits, labels, training.IGNORE_INDEX)

    def loss_and_gradients(
        self, input_ids, pixel_values=None, attention_mask=None, labels=None, trainable=("multi_modal_projector",)
    ):
        """``loss`` and its gradients with respect to the ``trainable`` parts of ``params`` (a tuple of
        training.PARTS: "multi_modal_projector", LLaVA's stage 1 alone; with "language_model" and "lm_head",
        stage 2). The vision tower is frozen. -> (loss: float, grads: one entry per trainable part, nested as
        ``params`` is, plus "inputs_embeds" [B, T, D], the gradient of the merged embeddings)."""
        bad = [p for p in trainable if p not in training.PARTS] if isinstance(trainable, (tuple, list)) else None
        if not trainable or bad is None or bad:
            raise ValueError(f"trainable must be a non-empty tuple of {training.PARTS}, got {trainable!r}")
        if self.config.tie_word_embeddings and "lm_head" in trainable and "language_model" not in trainable:
            raise ValueError("this model ties lm_head to the token embeddings: train 'language_model' with 'lm_head'")
        _check_plain_weights(self.params, "loss_and_gradients")
        input_ids, attention_mask, labels, features = self._checked_training_inputs(
            input_ids, pixel_values, attention_mask, labels
        )
        return training.loss_and_gradients(
            self.params, self.config, input_ids, attention_mask, labels, features, self.inv_freq, tuple(trainable)
        )

    def _checked_training_inputs(self, input_ids, pixel_values, attention_mask, labels):
        """The inputs of ``loss``, checked once -> device arrays (ids, mask, labels [B, T]; vision features or None)."""
        input_ids, attention_mask, _ = self._checked_text_inputs(input_ids, attention_mask, None, None)
        pixel_values = self._checked_images(input_ids, pixel_values, None)
        if labels is None:
            raise ValueError("labels are needed: [B, T] token ids, -100 where a position is not learnt")
        labels = np.asarray(backend.to_numpy(labels))
        if labels.shape != input_ids.shape or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be an integer array of input_ids' shape {list(input_ids.shape)}, got shape "
                f"{list(labels.shape)} dtype {labels.dtype}"
            )
        vocab, ignore = self.config.text.vocab_size, training.IGNORE_INDEX
        outside = (labels != ignore) & ((labels < 0) | (labels >= vocab))
        if outside.any():
            raise ValueError(
                f"labels must be token ids in [0, {vocab}) (vocab_size) or {ignore} (not learnt), got "
                f"{int(labels[outside][0])}"
            )
        if (labels[:, 1:] == ignore).all():
            raise ValueError(
                f"labels: every position that is predicted (all but the first) is {ignore}: no token to learn from"
            )
        xp = self.xp
        features = None if pixel_values is None else self._vision_features(pixel_values)  # [N, L, Dv'], frozen
        return xp.asarray(input_ids), xp.asarray(attention_mask), xp.asarray(labels), features

    # -- generation (the loop is generate.py's) -------------------------------------------------------

    def generate(self, input_ids, pixel_values=None, attention_mask=None, **kwargs):
        """Prompt + generated tokens [B, T + n_new], token for token Transformers' generate().

        Keyword arguments: max_new_tokens (20), do_sample (False: greedy), temperature (1.0),
        top_k (50), top_p (1.0), repetition_penalty (1.0), seed, eos_token_id and pad_token_id
        (default: the checkpoint's generation_config.json).
        """
        input_ids, tokens = self._generation(input_ids, pixel_values, attention_mask, kwargs)
        return np.concatenate([input_ids, np.stack(list(tokens), axis=1)], axis=1)

    def generate_tokens(self, input_ids, pixel_values=None, attention_mask=None, **kwargs):
        """The same generation as a generator of each step's tokens [B] (NumPy int64)."""
        return self._generation(input_ids, pixel_values, attention_mask, kwargs)[1]

    def stream(self, processor, input_ids, pixel_values=None, attention_mask=None, **kwargs):
        """Generate for one prompt and yield the answer's text piece by piece as it is produced."""
        return processor.stream_text(self.generate_tokens(input_ids, pixel_values, attention_mask, **kwargs))

    def _generation(self, input_ids, pixel_values, attention_mask, kwargs):
        """Check every input once, encode the images, make the cache -> (input_ids [B, T] NumPy, the lazy
        generator of the new tokens)."""
        unknown = sorted(set(kwargs) - set(generate.SETTINGS_DEFAULTS) - {"seed", "eos_token_id", "pad_token_id"})
        if unknown:
            raise TypeError(f"generate() got an unexpected keyword argument {unknown[0]!r}")
        settings = {name: kwargs.get(name, default) for name, default in generate.SETTINGS_DEFAULTS.items()}
        settings["seed"] = kwargs.get("seed")
        generate.check_generation_args(**settings)
        settings["eos_token_id"] = kwargs.get("eos_token_id", self.generation_defaults.eos_token_id)
        settings["pad_token_id"] = kwargs.get("pad_token_id", self.generation_defaults.pad_token_id)
        input_ids, attention_mask, _ = self._checked_text_inputs(input_ids, attention_mask, None, None)
        attention_mask = attention_mask.astype(np.int64)
        B, T = input_ids.shape
        context = self.config.text.max_position_embeddings
        if T >= context:
            raise ValueError(
                f"the prompt has {T} tokens, the model's context (max_position_embeddings) is {context}: "
                f"no room for a new token"
            )
        pixel_values = self._checked_images(input_ids, pixel_values, None)
        image_features = None if pixel_values is None else self._encode_image(pixel_values)  # [N, L, D]
        cache = self.new_cache(B, min(T + settings["max_new_tokens"], context))
        step = StaticDecodeStep(self, cache) if self.cuda_graphs else self.step
        tokens = generate.generate_tokens(step, cache, input_ids, attention_mask, image_features, **settings)
        return input_ids, tokens

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        text = self.config.text
        if max_len > text.max_position_embeddings:
            raise ValueError(
                f"max_len {max_len} exceeds the model's context (max_position_embeddings = "
                f"{text.max_position_embeddings})"
            )
        return KVCache(
            self.xp, text.num_hidden_layers, batch_size, text.num_key_value_heads, max_len, text.head_dim, self.dtype
        )

    # -- input checks: one clear error before any compute --------------------------------------------

    def _checked_pixel_values(self, pixel_values):
        vision = self.config.vision
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        shape = tuple(getattr(pixel_values, "shape", ()))
        if len(shape) != 4 or shape[1:] != expected:
            raise ValueError(
                f"pixel_values must have shape [N, {expected[0]}, {expected[1]}, {expected[2]}] for this model, "
                f"got {list(shape) if shape else type(pixel_values).__name__}"
            )
        if not np.issubdtype(np.dtype(pixel_values.dtype), np.floating):
            raise ValueError(f"pixel_values must be a float array, got dtype {pixel_values.dtype}")
        if not bool(backend.xp_of(pixel_values).isfinite(pixel_values).all()):  # NaN in, NaN logits out: say so
            raise ValueError("pixel_values hold NaN or infinite values")
        return pixel_values

    def _checked_images(self, input_ids, pixel_values, cache):
        """pixel_values checked against the image tokens of input_ids (NumPy [B, T]); None without images."""
        cfg = self.config
        n_image_tokens = int((input_ids == cfg.image_token_index).sum())
        if pixel_values is not None:
            pixel_values = self._checked_pixel_values(pixel_values)
            n_images = pixel_values.shape[0]
            if n_image_tokens != n_images * cfg.num_image_tokens:
                raise ValueError(
                    f"input_ids hold {n_image_tokens} image tokens (id {cfg.image_token_index}) but "
                    f"pixel_values has {n_images} image(s), which need {n_images} x {cfg.num_image_tokens} = "
                    f"{n_images * cfg.num_image_tokens}: expand each <image> to {cfg.num_image_tokens} tokens "
                    f"(the processor does this)"
                )
        elif n_image_tokens and (cache is None or cache.length == 0):
            # (In a continuation of a cached sequence, an image token the model generated itself is
            # embedded like any other token, as Transformers does in generate().)
            raise ValueError(
                f"input_ids hold {n_image_tokens} image tokens (id {cfg.image_token_index}) but no pixel_values "
                f"were given"
            )
        return pixel_values

    def _checked_text_inputs(self, input_ids, attention_mask, position_ids, cache):
        """Validate ids, mask and positions on the host; fill the defaults. Returns NumPy arrays."""
        input_ids = np.asarray(backend.to_numpy(input_ids))
        if input_ids.ndim != 2 or 0 in input_ids.shape or not np.issubdtype(input_ids.dtype, np.integer):
            raise ValueError(
                f"input_ids must be an integer array [B, T] with at least one row and one token, got shape "
                f"{list(input_ids.shape)} dtype {input_ids.dtype}"
            )
        vocab = self.config.text.vocab_size
        if input_ids.min() < 0 or input_ids.max() >= vocab:
            raise ValueError(
                f"input_ids must lie in [0, {vocab}) (vocab_size), got values from {input_ids.min()} to "
                f"{input_ids.max()}"
            )
        B, T = input_ids.shape
        start = 0 if cache is None else cache.length
        if cache is not None and cache.batch != B:
            raise ValueError(f"the cache was made for batch size {cache.batch}, input_ids has {B} rows")
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache is full: {start + T} positions needed, it was made for max_len {cache.max_len}")
        if start + T > self.config.text.max_position_embeddings:
            raise ValueError(
                f"sequence of {start + T} positions exceeds the model's context (max_position_embeddings = "
                f"{self.config.text.max_position_embeddings})"
            )
        if attention_mask is None:
            attention_mask = np.ones((B, start + T), dtype=np.int64)
        attention_mask = np.asarray(backend.to_numpy(attention_mask))
        if attention_mask.shape != (B, start + T):
            raise ValueError(
                f"attention_mask must have shape [B, cached + T] = [{B}, {start + T}], got {list(attention_mask.shape)}"
            )
        if not (np.issubdtype(attention_mask.dtype, np.number) or attention_mask.dtype == bool):
            raise ValueError(f"attention_mask must be 0s and 1s, got dtype {attention_mask.dtype}")
        others = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        if others.size:  # a 2 would count as padding and a 0.5 as nothing: never guess
            value = others.flat[0].item()
            raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (a token), got {value!r}")
        empty = np.flatnonzero(~attention_mask.astype(bool).any(axis=1))
        if empty.size:
            raise ValueError(f"attention_mask row {int(empty[0])} is all 0: that sequence has no token to attend to")
        attention_mask = attention_mask.astype(np.int64, copy=False)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(start, start + T), (B, T))
        position_ids = np.asarray(backend.to_numpy(position_ids))
        if position_ids.shape != (B, T):
            raise ValueError(f"position_ids must have shape [B, T] = [{B}, {T}], got {list(position_ids.shape)}")
        return input_ids, attention_mask, position_ids


def _check_plain_weights(params, what: str) -> None:
    """Training multiplies by the weights' transposes: they must be float arrays, not quantized or blocked."""
    language_model = params["language_model"]["layers"][0] if params["language_model"]["layers"] else {}
    for part in ("self_attn", "mlp"):
        for name, linear_params in language_model.get(part, {}).items():
            if not hasattr(linear_params["weight"], "dtype"):
                raise ValueError(
                    f"{what} needs the weights as float arrays; {part}.{name} holds a "
                    f"{type(linear_params['weight']).__name__}: load the model without quantize= and blocked_matmul="
                )
