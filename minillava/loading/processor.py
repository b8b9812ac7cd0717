"""Text side of LLaVA: chat template, <image> expansion, tokenizer, batching and padding, decoding.

    conversation ─ apply_chat_template ─▶ "USER: <image>\\nWhat is shown? ASSISTANT:"  (llava-1.5), or
                 "<|im_start|>user\\n<image>\\nWhat is shown?<|im_end|>\\n<|im_start|>assistant\\n"  (llava-interleave)
    images ─ preprocess.preprocess ─────────────────────────────────────▶ pixel_values    [N, 3, H, W]
    prompt ─ expand each <image> to L image tokens ─ tokenizer ─ pad ───▶ input_ids       [B, T]
                                                                          attention_mask  [B, T]
    generated ids ─ batch_decode ─▶ text

Equal to Transformers 5.24's ``LlavaProcessor.from_pretrained(folder)`` (models/llava/processing_llava.py
and ProcessorMixin in processing_utils.py), with these findings:

- Tokenizer: for a folder whose config.json says ``model_type: llava``, Transformers loads tokenizer.json
  as it is (``TokenizersBackend``), so the ``tokenizers`` library gives the same ids. (Without config.json it
  would rebuild a ``LlamaTokenizer`` in the Metaspace form, which tokenizes the legacy llava-hf tokenizer.json
  differently after special tokens; minillava always follows tokenizer.json.)
- BOS: added by tokenizer.json's post-processor (llava-1.5's adds <s>; llava-interleave's Qwen tokenizer, a
  byte-level BPE, adds nothing and has no BOS). Transformers 5.24 drops tokenizer_config.json's
  ``add_bos_token``/``add_eos_token`` when a tokenizer.json exists, and so does minillava.
- ``<image>`` expansion: the string is expanded before tokenizing, as Transformers does, to
  ``(H // patch) * (W // patch) + num_additional_image_tokens`` image tokens (minus one for the "default"
  strategy), H and W being the preprocessed image's size. ``patch_size``, ``vision_feature_select_strategy``
  and ``num_additional_image_tokens`` come from processor_config.json (llava-1.5: 14, "default", 1: 576
  tokens; llava-interleave: 14, "full", 0: 729 tokens). Where it lacks them (older folders) minillava takes the
  vision patch size and strategy from config.json, and one extra token for CLIP's CLS (none for SigLIP, which
  has no CLS): the number of image features the model makes. Transformers would fail there (no patch size) or
  count 0 extra tokens, one too few for a CLIP model.
- Padding: Transformers pads on tokenizer_config.json's ``padding_side`` (default right). Batched
  generation needs left padding, so ``load_processor`` pads left unless told otherwise
  (``padding_side=None`` follows tokenizer_config.json). As in Transformers, the side is the tokenizer's:
  ``processor.tokenizer.padding_side = "left"`` (the documentation's advice) and ``processor.padding_side`` set
  the same value (``ProcessorTokenizer``).
- Tensors: minillava returns NumPy arrays; ``return_tensors`` takes "np" or None, and refuses "pt" and the others
  with a message that says so.
- Chat template: processor_config.json's "chat_template" key, else chat_template.json, else
  chat_template.jinja (the .json wins over the .jinja, as in Transformers), else tokenizer_config.json's
  "chat_template" (Transformers' processor has no template then; its tokenizer would use this one).
  The llava-1.5 and llava-interleave templates are rendered natively (``render_llava_15``,
  ``render_llava_interleave``); any other template with Jinja, set up like Transformers'
  ``render_jinja_template``.

Legend: B = prompts, T = tokens per padded row, N = images, H, W = image size after preprocessing,
L = image tokens per image.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import AddedToken, Tokenizer

from ..demo import demo_folder
from ..model.clip import FEATURE_SELECT_STRATEGIES
from ..model.training import IGNORE_INDEX
from . import preprocess as image_preprocess
from .chat_template import conversation_images, native_renderer, render_jinja
from .config import load_config
from .files import is_json_int, read_json

IMAGE_TOKEN = "<image>"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
PADDING_SIDES = ("left", "right")
# return_tensors: minillava returns NumPy arrays, which Transformers calls "np"; None (left out) means the same.
# These name a framework minillava does not import: torch ("pt"), TensorFlow ("tf"), JAX ("jax"), MLX ("mlx").
OTHER_TENSOR_TYPES = ("pt", "tf", "jax", "mlx")


class ProcessorTokenizer:
    """``processor.tokenizer``: the folder's ``tokenizers.Tokenizer``, with the one setting Transformers users
    set on a processor's tokenizer, ``padding_side``.

    Transformers' documentation for LLaVA advises ``processor.tokenizer.padding_side = "left"`` before batched
    generation. A ``tokenizers.Tokenizer`` would take that attribute and ignore it, so the processor's tokenizer
    is this thin wrapper: ``padding_side`` ("left" or "right", checked when set) is where the processor reads its
    side (``processor.padding_side`` is the same value), every other attribute and method is the Tokenizer's
    (``encode``, ``decode``, ``token_to_id``, ...), and setting any other attribute is an AttributeError rather
    than a setting silently ignored. ``backend`` is the ``tokenizers.Tokenizer`` itself.
    """

    def __init__(self, backend: Tokenizer, padding_side: str = "left"):
        object.__setattr__(self, "backend", backend)  # (our __setattr__ takes padding_side only)
        self.padding_side = padding_side

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        object.__setattr__(self, "_padding_side", _check_padding_side(side, "padding_side"))

    def __getattr__(self, name):
        """Called only for names the wrapper lacks: the Tokenizer's attributes and methods."""
        if name == "backend":  # not set yet (a copy being built): no Tokenizer to ask, and no endless recursion
            raise AttributeError(name)
        try:
            return getattr(self.backend, name)
        except AttributeError:
            hint = f"; the processor has it: processor.{name}" if name in _ON_THE_PROCESSOR else ""
            raise AttributeError(
                f"processor.tokenizer (a tokenizers.Tokenizer) has no attribute {name!r}{hint}"
            ) from None

    def __setattr__(self, name, value):
        if name != "padding_side":
            raise AttributeError(
                f"processor.tokenizer.{name} cannot be set: minillava's tokenizer is tokenizer.json's "
                "tokenizers.Tokenizer, and of Transformers' tokenizer settings it takes padding_side only"
            )
        object.__setattr__(self, name, value)  # through the property, which checks it


# What Transformers users read on processor.tokenizer and minillava keeps on the processor (named in the error).
_ON_THE_PROCESSOR = frozenset(
    f"{name}_token{suffix}" for name in ("bos", "eos", "pad", "unk") for suffix in ("", "_id")
) | {"chat_template", "vocab_size", "batch_decode", "apply_chat_template"}


class LlavaProcessor:
    """Turns conversations, prompts and images into model inputs, and generated ids back into text.

    tokenizer: a ``tokenizers.Tokenizer`` (the folder's tokenizer.json), kept as ``ProcessorTokenizer``, which
    adds ``padding_side``;
    image_processor_config: ``preprocess.ImageProcessorConfig``;
    chat_template: the Jinja template text, or None;
    image_token / image_token_id: the placeholder ("<image>") and its id;
    patch_size, vision_feature_select_strategy, num_additional_image_tokens: how many image tokens an image
    takes (see ``image_token_count``); num_image_tokens: that count for an image of the preprocessed size;
    bos/eos/pad/unk_token(_id): the tokenizer's special tokens (None where the folder names none);
    padding_side: "left" or "right", the default for ``__call__``; kept on the tokenizer, as Transformers keeps it
    (``processor.padding_side`` and ``processor.tokenizer.padding_side`` are one value);
    vocab_size: the ids ``decode`` takes are 0 .. vocab_size - 1 (default: the tokenizer's; ``load_processor``
    takes the larger of it and the model's, whose embedding has padding rows past the tokenizer's ids);
    folder: the checkpoint folder it was read from (None when built in code), named in its errors.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor_config: image_preprocess.ImageProcessorConfig,
        patch_size: int,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 1,
        chat_template: str | None = None,
        image_token: str = IMAGE_TOKEN,
        special_tokens: dict[str, str] | None = None,
        padding_side: str = "left",
        vocab_size: int | None = None,
        folder: Path | None = None,
    ):
        if isinstance(tokenizer, ProcessorTokenizer):
            tokenizer = tokenizer.backend
        self.tokenizer = ProcessorTokenizer(tokenizer, padding_side)
        self.folder = folder
        self.image_processor_config = image_processor_config
        self.chat_template = chat_template
        if not _is_positive_int(patch_size):
            raise ValueError(f"patch_size must be a positive int, got {reprlib.repr(patch_size)}")
        if vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {FEATURE_SELECT_STRATEGIES}, "
                f"got {reprlib.repr(vision_feature_select_strategy)}"
            )
        if not (is_json_int(num_additional_image_tokens) and num_additional_image_tokens in (0, 1)):
            raise ValueError(  # minillava's vision towers add one token (CLIP's CLS) or none (SigLIP)
                f"num_additional_image_tokens must be 0 or 1, got {reprlib.repr(num_additional_image_tokens)}"
            )
        if not isinstance(image_token, str) or not image_token:  # "" would be found between every two characters
            raise ValueError(f"image_token must be a non-empty string, got {reprlib.repr(image_token)}")
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        if image_processor_config.output_hw is not None:
            self.image_token_count(*image_processor_config.output_hw)  # at least one token per image (or an error)
        self.image_token = image_token
        self.image_token_id = tokenizer.token_to_id(image_token)
        if self.image_token_id is None:
            raise ValueError(f"the image token {image_token!r} is not in the tokenizer's vocabulary")
        special_tokens = special_tokens or {}
        for name in ("bos", "eos", "pad", "unk"):
            token = special_tokens.get(f"{name}_token")
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", None if token is None else tokenizer.token_to_id(token))
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True) if vocab_size is None else vocab_size
        if not _is_positive_int(self.vocab_size):
            raise ValueError(f"vocab_size must be a positive int, got {reprlib.repr(vocab_size)}")
        # Byte-fallback tokens <0x00> .. <0xFF>: characters outside the BPE vocabulary are spelled in bytes. A
        # byte-level BPE (Qwen's) has none: its tokens are bytes already, and `stream_text` holds back a text that
        # ends inside a character by its U+FFFD.
        self.byte_token_ids = frozenset(
            i for token, i in tokenizer.get_vocab(with_added_tokens=False).items() if _BYTE_TOKEN.fullmatch(token)
        )

    @property
    def padding_side(self) -> str:
        """The side ``__call__`` pads on by default: the tokenizer's, as in Transformers."""
        return self.tokenizer.padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        self.tokenizer.padding_side = side

    # -- image tokens ---------------------------------------------------------------------------------

    def image_token_count(self, height: int, width: int) -> int:
        """Image tokens for one preprocessed image of height x width (LlavaProcessor.replace_image_token):
        one per patch, plus the extra tokens (CLS), minus CLS again for the "default" strategy."""
        count = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        count = count - 1 if self.vision_feature_select_strategy == "default" else count
        if count < 1:  # the <image> markers would vanish from the prompt, and the image with them
            raise ValueError(
                f"a preprocessed image of {height}x{width} pixels makes {count} image tokens in patches of "
                f"{self.patch_size} (strategy {self.vision_feature_select_strategy!r}, "
                f"{self.num_additional_image_tokens} additional): patch_size is larger than the image"
            )
        return count

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per image of the preprocessed size: after the center crop (576 for llava-1.5) or the
        exact resize (729 for llava-interleave: 384 // 14 = 27 patches a side)."""
        hw = self.image_processor_config.output_hw  # (H, W)
        if hw is None:
            raise ValueError("images keep their own sizes (no crop, no exact resize): see image_token_count")
        return self.image_token_count(*hw)

    # -- chat template --------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        conversation,
        add_generation_prompt: bool = False,
        use_jinja: bool = False,
        *,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = None,
        padding=True,
        padding_side: str | None = None,
    ):
        """Render a conversation (a list of {"role", "content"} messages) into a prompt string.

        A batch (a list of conversations) gives a list of prompts. The llava-1.5 and llava-interleave templates
        are rendered by ``render_llava_15`` and ``render_llava_interleave``; any other template, or
        ``use_jinja=True``, by ``render_jinja``, which reproduces Transformers exactly (including its quirks, such
        as both templates dropping string content).

        tokenize=True goes on to the model's inputs, as Transformers' ``ProcessorMixin.apply_chat_template``
        does: the pictures come from the conversation's image parts ({"type": "image", "image": <PIL image or
        path>}, or "path", or "url": ``chat_template.conversation_images``) and the prompts and pictures go
        through ``__call__`` (``padding``, ``padding_side``, ``return_tensors`` as there), without a second BOS
        when the template writes one. The result is the inputs dict with return_dict=True, else input_ids [B, T]
        alone (also for one conversation, as Transformers).
        """
        if not isinstance(tokenize, bool) or not isinstance(return_dict, bool):
            raise ValueError(f"tokenize and return_dict must be True or False, got {tokenize!r} and {return_dict!r}")
        _check_return_tensors(return_tensors)
        if not tokenize and (return_dict or return_tensors is not None):  # Transformers would return the string
            raise ValueError(
                "return_dict and return_tensors describe token ids, but tokenize is False (the prompt is a string): "
                "pass tokenize=True, or leave them out"
            )
        if self.chat_template is None:
            raise ValueError(
                f"{self.folder or 'this processor'}: no chat template (looked for processor_config.json's "
                "'chat_template', chat_template.json, chat_template.jinja and tokenizer_config.json's "
                "'chat_template'); write the prompt yourself, or set processor.chat_template"
            )
        batched = (
            isinstance(conversation, (list, tuple))
            and bool(conversation)
            and isinstance(conversation[0], (list, tuple))
        )
        # a batch: one level only, each item a conversation (so a list nested 5000 deep is one bad message, not
        # 5000 calls)
        conversations = conversation if batched else [conversation]
        prompts = [self._render(c, add_generation_prompt, use_jinja) for c in conversations]
        if not tokenize:
            return prompts if batched else prompts[0]
        name = "conversations[{}]" if batched else "conversation"
        images = [conversation_images(c, name.format(i)) for i, c in enumerate(conversations)]  # one list per prompt
        # The processor adds tokenizer.json's special tokens (llava-1.5's <s>) to a prompt, unless the template has
        # written the BOS itself: then Transformers does not add it again, and neither do we.
        written_bos = self.bos_token is not None and prompts[0].startswith(self.bos_token)
        side = self.padding_side if padding_side is None else _check_padding_side(padding_side, "padding_side")
        inputs = self._encode(
            images if any(images) else None, prompts, padding, side, add_special_tokens=not written_bos
        )
        return inputs if return_dict else inputs["input_ids"]

    def _render(self, conversation, add_generation_prompt: bool, use_jinja: bool) -> str:
        native = None if use_jinja else native_renderer(self.chat_template)
        if native is not None:
            return native(conversation, add_generation_prompt)
        return render_jinja(
            self.chat_template,
            conversation,
            add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            unk_token=self.unk_token,
            pad_token=self.pad_token,
        )

    # -- encoding -------------------------------------------------------------------------------------

    def __call__(
        self, images=None, text=None, padding=True, padding_side: str | None = None, return_tensors: str | None = None
    ) -> dict[str, np.ndarray]:
        """Prompts (and their images) -> {"input_ids" [B, T] int64, "attention_mask" [B, T] int64,
        "pixel_values" [N, 3, H, W] float32 (only with images)}.

        text: a prompt or a list of prompts, each "<image>" marking where an image goes;
        images: a PIL image, a path or an http(s) URL, or a list of them (or one list per prompt), in the order of
        the markers;
        padding: True (or "longest") pads every row to the longest on ``padding_side`` (default: the
        processor's); False requires rows of equal length (Transformers would return ragged lists);
        return_tensors: "np" or None, both NumPy arrays (Transformers' "pt" and the others are refused: minillava
        imports no framework).
        """
        _check_return_tensors(return_tensors)
        side = self.padding_side if padding_side is None else _check_padding_side(padding_side, "padding_side")
        return self._encode(images, text, padding, side, add_special_tokens=True)

    def _encode(self, images, text, padding, side: str, add_special_tokens: bool) -> dict[str, np.ndarray]:
        """``__call__``'s work, for it and for ``apply_chat_template(tokenize=True)``, which may leave out the
        special tokens (a prompt whose template wrote the BOS)."""
        if images is None and text is None:
            raise ValueError("give text (a prompt or a list of prompts), images, or both")
        prompts = None if text is None else _as_prompts(text)
        image_list = None if images is None else _as_image_list(images)
        if not isinstance(padding, (bool, str)) or padding not in (True, False, "longest", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest' or 'do_not_pad', got {reprlib.repr(padding)}")
        nested = isinstance(images, (list, tuple)) and any(isinstance(item, (list, tuple)) for item in images)
        if prompts is not None and nested:  # one list of images per prompt: each prompt's count must match its own
            if len(images) != len(prompts):
                raise ValueError(f"`images` holds {len(images)} lists but there are {len(prompts)} prompts: give one "
                                 "list of images per prompt, or one flat list in the order of the markers")  # fmt: skip
            for i, (prompt, own) in enumerate(zip(prompts, images, strict=True)):
                n_own = len(own) if isinstance(own, (list, tuple)) else 1
                if prompt.count(self.image_token) != n_own:
                    raise ValueError(
                        f"prompt {i} holds {prompt.count(self.image_token)} {self.image_token} marker(s) but its "
                        f"list in `images` has {n_own} image(s)"
                    )
        if prompts is not None:  # check the markers before any image is decoded
            markers = sum(prompt.count(self.image_token) for prompt in prompts)
            given = 0 if image_list is None else len(image_list)
            if markers != given:
                raise ValueError(
                    f"the prompts hold {markers} {self.image_token} marker(s) but {given} image(s) were given in "
                    f"`images`; put one {self.image_token} in `text` for each image"
                )
        out = {}
        if image_list is not None:
            pixel_values = image_preprocess.preprocess(image_list, self.image_processor_config)  # [N, 3, H, W]
            out["pixel_values"] = pixel_values
        if prompts is not None:
            if image_list is not None:
                count = self.image_token_count(*pixel_values.shape[2:])  # L (all images share one size)
                prompts = [prompt.replace(self.image_token, self.image_token * count) for prompt in prompts]
            encodings = self.tokenizer.encode_batch(prompts, add_special_tokens=add_special_tokens)
            rows = [encoding.ids for encoding in encodings]
            input_ids, attention_mask = self._pad(rows, padding, side)  # [B, T], [B, T]
            out = {"input_ids": input_ids, "attention_mask": attention_mask, **out}
        return out

    def training_inputs(self, conversations, images=None, padding_side: str | None = None) -> dict[str, np.ndarray]:
        """Whole conversations (each ending with the assistant's answer) and their images -> the model's inputs and
        ``labels`` for ``LlavaModel.loss``: the tokens of every assistant answer, and the end-of-sequence token
        after each, count; everything else (system and user turns, the image tokens, the template's role markers,
        the padding) is -100, as LLaVA builds its training targets.

        LLaVA's conversation format ends each answer with </s> ("ASSISTANT: blue</s>USER: ..."); llava-hf's
        llava-1.5 template does not write it, so it is added after any answer that does not already end with the
        eos token (llava-interleave's template ends each turn with <|im_end|>, its eos: nothing is added).
        -> {"input_ids", "attention_mask", "labels"} [B, T] int64 (+ "pixel_values" with images), padded on
        ``padding_side`` (default: the processor's).
        """
        if isinstance(conversations, (list, tuple)) and conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # one conversation
        if not isinstance(conversations, (list, tuple)) or not conversations:
            raise ValueError("conversations must be a conversation (a list of messages) or a non-empty list of them")
        side = self.padding_side if padding_side is None else _check_padding_side(padding_side, "padding_side")
        out = {} if images is None else {"pixel_values": self(images=images)["pixel_values"]}  # [N, 3, H, W]
        n_images = 0 if images is None else out["pixel_values"].shape[0]
        count = 0 if images is None else self.image_token_count(*out["pixel_values"].shape[2:])  # per image

        def ids_of(text):  # the prompt's tokens, each <image> expanded as __call__ does
            return self.tokenizer.encode(text.replace(self.image_token, self.image_token * count)).ids

        rows, label_rows, markers = [], [], 0
        for i, conversation in enumerate(conversations):
            answers = [k for k, m in enumerate(conversation) if isinstance(m, dict) and m.get("role") == "assistant"]
            if not answers or answers[-1] != len(conversation) - 1:
                raise ValueError(f"conversations[{i}] must end with an assistant message (the answer to learn)")
            full_text = self.apply_chat_template(conversation).rstrip()  # (whitespace after the last answer: dropped)
            _check_text(full_text, f"conversations[{i}]")  # each turn's text is part of it
            markers += full_text.count(self.image_token)
            full = ids_of(full_text)
            row, labels, done = [], [], 0  # done: tokens of `full` copied to row so far
            for k in answers:
                prompt = ids_of(self.apply_chat_template(conversation[:k], add_generation_prompt=True))
                through = ids_of(self.apply_chat_template(conversation[: k + 1]).rstrip())  # up to the answer's end
                start, end = len(prompt), len(through)
                # Both must be beginnings of the whole conversation's tokens, or the spans would mark other tokens.
                if not done <= start <= end or full[:start] != prompt or full[:end] != through:
                    raise ValueError(f"conversations[{i}]: the template's text does not tokenize turn by turn")
                answer = full[start:end]
                if self.eos_token_id is not None and (not answer or answer[-1] != self.eos_token_id):
                    answer = [*answer, self.eos_token_id]  # LLaVA's </s> after the answer
                row += full[done:start] + answer
                labels += [IGNORE_INDEX] * (start - done) + answer
                done = end
            rows.append(row + full[done:])
            label_rows.append(labels + [IGNORE_INDEX] * (len(full) - done))
        if markers != n_images:
            raise ValueError(f"the conversations hold {markers} image(s) but {n_images} were given in `images`")
        input_ids, attention_mask = self._pad(rows, True, side)  # [B, T]
        labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)  # [B, T]
        labels[attention_mask == 1] = np.concatenate([np.asarray(r, dtype=np.int64) for r in label_rows])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **out}

    def _pad(self, rows: list[list[int]], padding, side: str) -> tuple[np.ndarray, np.ndarray]:
        """Token rows -> (input_ids [B, T], attention_mask [B, T]), padded with pad_token_id on `side`."""
        lengths = [len(row) for row in rows]
        longest = max(lengths)
        if padding in (False, "do_not_pad") and min(lengths) != longest:
            raise ValueError(
                f"padding=False but the prompts tokenize to different lengths {lengths}; pass padding=True "
                "(Transformers returns ragged lists here, which cannot be one array)"
            )
        if min(lengths) != longest and self.pad_token_id is None:
            raise ValueError("the prompts need padding but the tokenizer has no pad token (pad_token)")
        input_ids = np.full((len(rows), longest), self.pad_token_id or 0, dtype=np.int64)  # [B, T]
        attention_mask = np.zeros((len(rows), longest), dtype=np.int64)  # [B, T]
        for i, row in enumerate(rows):
            start = longest - len(row) if side == "left" else 0
            input_ids[i, start : start + len(row)] = row
            attention_mask[i, start : start + len(row)] = 1
        return input_ids, attention_mask

    # -- decoding -------------------------------------------------------------------------------------

    def batch_decode(self, ids, skip_special_tokens: bool = False) -> list[str]:
        """[B, T] token ids (array or list of lists, rows may differ in length) -> B strings."""
        if isinstance(ids, np.ndarray) or hasattr(ids, "tolist"):
            ids = np.asarray(ids)
            if ids.ndim != 2:
                raise ValueError(f"batch_decode takes ids of shape [B, T], got shape {ids.shape}; use decode")
        elif not isinstance(ids, (list, tuple)):
            raise TypeError(f"batch_decode takes ids [B, T] (an array or a list of rows), got {type(ids).__name__}")
        return [self.decode(row, skip_special_tokens) for row in ids]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """[T] token ids (or one int) -> text, through tokenizer.json's decoder (byte fallback, ▁ -> space).

        Ids past the tokenizer's own but within ``vocab_size`` (llava-1.5 pads its embedding matrix from 32002 to
        32064 rows, so a model can produce them) decode to nothing, as in Transformers; an id outside
        [0, vocab_size) is a ValueError naming it."""
        try:
            array = np.asarray(ids)
        except ValueError:  # NumPy's words for rows of different lengths
            raise ValueError("decode takes one row of token ids; use batch_decode for several") from None
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != 1:
            raise ValueError(f"decode takes one row of token ids, got shape {array.shape}; use batch_decode")
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
        outside = np.flatnonzero((array < 0) | (array >= self.vocab_size))  # positions
        if outside.size:
            i = int(outside[0])
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}) (the vocabulary), but ids[{i}] is {int(array[i])}"
            )
        return self.tokenizer.decode(array.tolist(), skip_special_tokens=skip_special_tokens)

    # -- streaming ------------------------------------------------------------------------------------

    def stream_text(self, token_steps):
        """One row's tokens as they are generated (an iterator of [1] arrays, e.g. ``model.generate_tokens``
        with B = 1) -> the answer's text, piece by piece (see ``stream_text``)."""
        decode = lambda ids: self.decode(ids, skip_special_tokens=True)  # noqa: E731
        return stream_text(token_steps, decode, self.byte_token_ids)


def stream_text(token_steps, decode, byte_token_ids=frozenset()):
    """Turn a one-row stream of tokens into a stream of text pieces.

    token_steps: an iterator of [1] token arrays (generate_tokens with B = 1); decode: ids -> str
    (e.g. ``processor.decode(ids, skip_special_tokens=True)``); byte_token_ids: the tokenizer's
    byte-fallback tokens (<0x00> .. <0xFF>).

    The whole answer so far is decoded at each step and only its new end is yielded. Text that may
    still change is held back: a run of byte-fallback tokens decodes as a whole (valid UTF-8 becomes
    its characters, anything else one U+FFFD per byte), so nothing is yielded while the last token
    is a byte token, nor while the text ends in an incomplete character (U+FFFD).
    """
    ids, printed = [], ""
    for tokens in token_steps:
        if len(tokens) != 1:
            raise ValueError(f"streaming text needs a batch of one sequence, got {len(tokens)}")
        ids.append(int(tokens[0]))
        if ids[-1] in byte_token_ids:
            continue
        text = decode(ids)
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(printed):
            yield text[len(printed) :]
        printed = text
    text = decode(ids) if ids else ""
    if len(text) > len(printed):
        yield text[len(printed) :]


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def _as_prompts(text) -> list[str]:
    """The text where it enters the processor: strings that the tokenizer can take."""
    prompts = [text] if isinstance(text, str) else text
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError(f"`text` must be a string or a non-empty list of strings, got {type(text).__name__}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"`text` must hold strings, but text[{i}] is a {type(prompt).__name__}")
        _check_text(prompt, f"text[{i}]")
    return list(prompts)


def _check_text(text: str, name: str) -> None:
    """A lone surrogate (half of a UTF-16 pair, as a broken JSON escape "\\ud83c" gives) is no character: UTF-8
    cannot encode it, and the tokenizer refuses it with a TypeError naming nothing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} holds the lone surrogate {text[err.start]!r} at position {err.start}, which is not a character "
            "(half of a UTF-16 pair); UTF-8 cannot encode it"
        ) from None


def _as_image_list(images) -> list:
    """A PIL image or path, a list of them, or a list of lists (one per prompt) -> a flat list."""
    if isinstance(images, (Image.Image, str, Path)):
        return [images]
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"`images` must be a PIL image, a path or a list of them, got {type(images).__name__}")
    flat = []
    for item in images:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    for i, image in enumerate(flat):
        if not isinstance(image, (Image.Image, str, Path)):
            raise ValueError(f"`images` must hold PIL images or paths, but image {i} is a {type(image).__name__}")
    return flat


def _check_return_tensors(return_tensors) -> None:
    """minillava returns NumPy arrays: return_tensors may say so ("np") or be left out (None)."""
    if return_tensors is None:
        return
    if not isinstance(return_tensors, str):  # (Transformers' TensorType.NUMPY is a str, "np")
        raise ValueError(f"return_tensors must be 'np' or None (NumPy arrays), got {reprlib.repr(return_tensors)}")
    if return_tensors == "np":
        return
    if return_tensors in OTHER_TENSOR_TYPES:
        raise ValueError(
            f"return_tensors={return_tensors!r}: minillava returns NumPy arrays (it imports no torch, TensorFlow, JAX "
            "or MLX); use return_tensors='np' or leave it out"
        )
    raise ValueError(f"return_tensors must be 'np' or None (NumPy arrays), got {reprlib.repr(return_tensors)}")


def _check_padding_side(side, name: str) -> str:
    if not isinstance(side, str) or side not in PADDING_SIDES:
        raise ValueError(f"{name} must be 'left' or 'right', got {reprlib.repr(side)}")
    return side


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_processor(path=None, padding_side: str | None = "left") -> LlavaProcessor:
    """Read a checkpoint folder's tokenizer.json, tokenizer_config.json, processor/preprocessor config,
    chat template and (for older folders) config.json. ``padding_side=None`` follows tokenizer_config.json
    (default "right", as Transformers); the default "left" is what batched generation needs.
    With no path, the demo model bundled with minillava."""
    folder = Path(path) if path is not None else demo_folder()
    if folder.is_file():  # tokenizer.json or config.json: the processor reads several files of the folder
        raise ValueError(
            f"{folder} is a file; load_processor takes the checkpoint folder that holds it, e.g. {folder.parent}"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json (minillava reads the tokenizers-library file)")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as err:  # the tokenizers library raises a bare Exception, naming no file, for one it cannot read
        raise ValueError(f"{tokenizer_file}: not a tokenizer the tokenizers library can read ({err})") from None
    tokenizer.no_padding()  # minillava pads itself
    tokenizer.no_truncation()

    tokenizer_config = read_json(folder / "tokenizer_config.json")
    special_map = read_json(folder / "special_tokens_map.json")
    special_tokens = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        token = _token_text(tokenizer_config.get(name)) or _token_text(special_map.get(name))
        if token is not None:
            special_tokens[name] = token
            if tokenizer.token_to_id(token) is None:  # Transformers adds a named special token that is missing
                tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])

    # How many tokens an image takes: processor_config.json, else (older folders) the model's config.json, whose
    # vision tower has one extra token (CLS) for CLIP and none for SigLIP.
    processor_file = folder / "processor_config.json"
    processor_config = read_json(processor_file)
    patch_size = _field(processor_config, "patch_size", processor_file, "a positive int (pixels)", _is_positive_int)
    strategy = _field(processor_config, "vision_feature_select_strategy", processor_file,
                      f"one of {FEATURE_SELECT_STRATEGIES}", lambda v: v in FEATURE_SELECT_STRATEGIES)  # fmt: skip
    extra = _field(processor_config, "num_additional_image_tokens", processor_file,
                   "0 or 1 (CLIP's CLS token, or none)", lambda v: is_json_int(v) and v in (0, 1))  # fmt: skip
    image_token = _field(processor_config, "image_token", processor_file, "a non-empty string",
                         lambda v: isinstance(v, str) and v != "")  # fmt: skip
    model_config = load_config(folder) if (folder / "config.json").is_file() else None
    if model_config is not None:
        patch_size = patch_size or model_config.vision.patch_size
        strategy = strategy or model_config.vision_feature_select_strategy
        extra = (1 if model_config.vision.has_cls_token else 0) if extra is None else extra
    if patch_size is None:
        raise ValueError(f"{folder}: no patch_size in processor_config.json and no config.json to take it from")

    if padding_side is None:
        padding_side = tokenizer_config.get("padding_side", "right")
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"{folder / 'tokenizer_config.json'}: padding_side must be 'left' or 'right'")

    # The ids a model can produce: its embedding rows (llava-1.5: 32064, past the tokenizer's 32002).
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if model_config is not None:
        vocab_size = max(vocab_size, model_config.text.vocab_size)

    image_processor_config = image_preprocess.load_image_processor_config(folder)
    chat_template = _read_chat_template(folder, processor_config, tokenizer_config)
    try:
        return LlavaProcessor(
            tokenizer=tokenizer,
            image_processor_config=image_processor_config,
            patch_size=patch_size,
            vision_feature_select_strategy=strategy or "default",
            num_additional_image_tokens=1 if extra is None else extra,
            chat_template=chat_template,
            image_token=IMAGE_TOKEN if image_token is None else image_token,
            special_tokens=special_tokens,
            padding_side=padding_side,
            vocab_size=vocab_size,
            folder=folder,
        )
    except ValueError as err:  # what only the files together get wrong (an image token not in tokenizer.json, ...)
        raise ValueError(f"{folder}: {err}") from None


def _field(config: dict, name: str, file: Path, expected: str, ok):
    """config[name] (None when absent or null), checked with ``ok``: a bad value is a ValueError naming the file."""
    value = config.get(name)
    if value is not None and not ok(value):
        raise ValueError(f"{file}: {name!r} must be {expected}; got {reprlib.repr(value)}")
    return value


def _is_positive_int(value) -> bool:
    return is_json_int(value) and value > 0


def _read_chat_template(folder: Path, processor_config: dict, tokenizer_config: dict) -> str | None:
    """processor_config.json's "chat_template" > chat_template.json > chat_template.jinja >
    tokenizer_config.json's "chat_template" (a dict or list of named templates: the "default" one)."""
    if processor_config.get("chat_template") is not None:
        return _default_template(processor_config["chat_template"], folder / "processor_config.json")
    legacy = folder / "chat_template.json"
    if legacy.is_file():
        data = read_json(legacy)
        if "chat_template" not in data:
            raise ValueError(f"{legacy}: no 'chat_template' key")
        return _default_template(data["chat_template"], legacy)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{jinja}: not UTF-8 text ({err})") from None
    if tokenizer_config.get("chat_template") is not None:
        return _default_template(tokenizer_config["chat_template"], folder / "tokenizer_config.json")
    return None


def _default_template(value, source: Path) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # tokenizer_config.json's [{"name": ..., "template": ...}, ...]
        value = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
    if isinstance(value, dict) and isinstance(value.get("default"), str):
        return value["default"]
    raise ValueError(f"{source}: 'chat_template' must be a string or hold a 'default' template")


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ..., ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
