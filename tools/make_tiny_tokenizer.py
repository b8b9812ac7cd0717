"""Build tiny tokenizers laid out like llava-hf's, and write the processor files of a checkpoint folder.

The tests compare minillava's processor with Transformers' ``LlavaProcessor`` on these folders, so the
files are written by Transformers itself (``LlavaProcessor.save_pretrained``), then optionally rewritten
into the older file forms that published checkpoints still have.

Tokenizer styles (the vocabulary and merges are the same in all of them; the pipeline around the BPE
model differs):

- ``llama``:      Llama's legacy form, as in llava-hf/llava-1.5-7b-hf's tokenizer.json: normalizer
                  Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, BPE with byte_fallback and fuse_unk,
                  decoder Replace("▁", " ") + ByteFallback + Fuse + Strip(left 1), and a TemplateProcessing
                  post-processor that adds <s>.
- ``metaspace``:  the newer form Transformers 5.x's ``LlamaTokenizer`` builds: no normalizer, Metaspace
                  pre-tokenizer (prepend_scheme "first", split false); the decoder stays
                  Replace + ByteFallback + Fuse + Strip, as ``LlamaTokenizer`` makes it (a Metaspace decoder
                  would print byte-fallback pieces as "<0xE2>" text).
- ``metaspace_decoder``: as ``metaspace`` but with the matching Metaspace decoder, to check that decoding
                  follows whatever decoder tokenizer.json names.

Vocabulary: <unk>=0, <s>=1, </s>=2, the 256 byte tokens <0x00>..<0xFF> (3..258), then characters and BPE
merges trained with tokenizers' BpeTrainer on the small corpus below, 380 base tokens in all; then the
added special tokens <image>=380 and <pad>=381 (llava-hf has <image>=32000 and <pad>=32001 after Llama's
32000). Rare characters (emoji, most CJK) are left out of the alphabet so they go through byte fallback.

The llava-1.5 chat template below is the one of llava-hf/llava-1.5-7b-hf; its text is quoted in
Transformers' own processor test (tests/models/llava/test_processing_llava.py, whose tiny processor is made
from that checkpoint and "must match processor_config.json from the Hub repo").

Usage:  python tools/make_tiny_tokenizer.py OUT_DIR [--style llama] [--template-file json]
                                             [--image-processor-file preprocessor]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The llava-1.5 chat template, as llava-hf/llava-1.5-7b-hf ships it (minillava keeps the text).
from minillava.loading.chat_template import LLAVA_15_CHAT_TEMPLATE

STYLES = ("llama", "metaspace", "metaspace_decoder")
BASE_VOCAB_SIZE = 380  # <unk> <s> </s> + 256 bytes + 121 trained pieces
IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"
SPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker

# Captions and questions about pictures. Repeated phrases make the trainer learn whole words; the
# non-ASCII words appear just often enough that é and ï get into the alphabet, while emoji and most
# CJK characters stay out and are encoded as bytes.
CORPUS = """
What is shown in the image? The image shows a red car parked next to a blue house.
What is shown in this image? A small white dog is sitting on the green grass.
How many cats are there in the picture? There are three cats on the sofa.
How many people are in the photo? Two people are standing near the window.
What color is the ball? The ball is yellow. The square is purple and the circle is orange.
Describe the image in detail. The picture shows a tall tree, a round table and four chairs.
Is there a red triangle in the image? Yes, there is one red triangle and two green squares.
What shape is the sign? The sign is an octagon. It is red with white letters.
The cat is black and the dog is brown. The bird on the roof is blue.
A man is reading a book in a café. The café has seven tables and a large window.
The naïve painting shows a village with five houses and one church.
The photo was taken in 日本. The sign says 東京 and the sky is grey.
A child holds a red balloon 🎈 and smiles 😀 at the camera.
The cake has candles 🎂 and the table is covered with flowers 🌸.
Where is the cat? The cat is under the table. The dog is on the chair.
What is the man holding? He is holding a cup of coffee and a newspaper.
How many birds can you see? I can see six birds in the sky.
What is the woman wearing? She is wearing a long blue dress and a white hat.
Count the apples in the basket. There are eight red apples and two green apples.
The image shows a street at night with bright lights and many cars.
What time of day is it? It looks like the morning, the sun is rising.
The boat on the lake is white. The water is calm and dark blue.
Is the door open or closed? The door is open and the light is on.
There is a zebra, a giraffe and an elephant in the field.
What is written on the board? The board says: "Welcome to the café!"
Answer the question using a single word or phrase. Yes. No. Two. Red.
"""


def build_tokenizer(style: str = "llama"):
    """A ``tokenizers.Tokenizer`` with llava-hf's layout (see the module docstring) in the given style,
    trained on ``CORPUS``."""
    # Emoji are left out of training so that they always go through byte fallback.
    lines = ["".join(ch for ch in line if ord(ch) < 0x10000) for line in CORPUS.strip().splitlines()]
    n_trained = BASE_VOCAB_SIZE - 3 - 256
    return train_tokenizer(lines, n_trained, style, limit_alphabet=60)


def train_tokenizer(lines, n_trained: int, style: str = "llama", limit_alphabet: int | None = None):
    """A byte-fallback BPE ``tokenizers.Tokenizer`` laid out like llava-hf's, trained on ``lines``.

    <unk>=0, <s>=1, </s>=2, the byte tokens <0x00>..<0xFF> (3..258), then ``n_trained`` characters and
    merges learnt from the lines; then the added special tokens <image> and <pad> (ids 259 + n_trained and
    260 + n_trained). The pipeline around the BPE model is the ``style``'s (see the module docstring).
    Also used by tools/train_demo.py for the demo model's tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]

    # Train on words marked the SentencePiece way ("▁word"), so that merges stay inside words.
    trainer_tokenizer = Tokenizer(BPE(unk_token="<unk>"))
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    limit = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}  # None: every character
    trainer = BpeTrainer(vocab_size=len(specials) + n_trained, special_tokens=specials, show_progress=False, **limit)
    trainer_tokenizer.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    pieces = [token for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]) if token not in specials]
    if len(pieces) != n_trained:
        raise RuntimeError(f"the trainer made {len(pieces)} pieces, expected {n_trained}; change the corpus")
    vocab = {token: i for i, token in enumerate(specials + byte_tokens + pieces)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]

    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if style == "llama":
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    if style == "metaspace_decoder":
        tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
    else:
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_special_tokens(
        [AddedToken(IMAGE_TOKEN, special=True, normalized=False), AddedToken(PAD_TOKEN, special=True, normalized=False)]
    )
    n_base = len(vocab)
    assert tokenizer.token_to_id(IMAGE_TOKEN) == n_base and tokenizer.token_to_id(PAD_TOKEN) == n_base + 1
    return tokenizer


def build_processor(
    style: str = "llama",
    image_size: int = 28,
    patch_size: int = 7,
    strategy: str = "default",
    padding_side=None,
    tokenizer=None,
):
    """A Transformers ``LlavaProcessor`` around ``tokenizer`` (a ``tokenizers.Tokenizer``; by default
    ``build_tokenizer(style)``), configured like llava-hf's."""
    from transformers import CLIPImageProcessor, LlamaTokenizer, LlavaProcessor

    # llava-hf's tokenizer_config.json names LlamaTokenizer; given a tokenizer_object it keeps our pipeline.
    tokenizer = LlamaTokenizer(
        tokenizer_object=build_tokenizer(style) if tokenizer is None else tokenizer,
        add_bos_token=True,
        add_eos_token=False,
        legacy=style == "llama",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=PAD_TOKEN,
        **({"padding_side": padding_side} if padding_side else {}),
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def reference_processor(folder, **kwargs):
    """Transformers' ``LlavaProcessor`` for ``folder`` with the PIL-backend image processor, the one
    minillava.loading.preprocess follows: the reference in every comparison.

    With torchvision installed, Transformers 5.x loads the torchvision-backed image processor by default,
    whose resize is not PIL's (pixel_values up to 0.015 apart, seen with Transformers 5.17 + torchvision);
    without torchvision it falls back to the PIL backend. Pinning the backend makes the tests mean the same
    on both kinds of machine."""
    import transformers

    processor = transformers.LlavaProcessor.from_pretrained(folder, **kwargs)
    name = type(processor.image_processor).__name__
    if not name.endswith("Pil"):  # e.g. CLIPImageProcessor (torchvision) -> CLIPImageProcessorPil
        processor.image_processor = getattr(transformers, f"{name}Pil").from_pretrained(folder)
    return processor


def write_processor_files(
    folder,
    style: str = "llama",
    image_size: int = 28,
    patch_size: int = 7,
    strategy: str = "default",
    template_file: str = "jinja",
    image_processor_file: str = "processor",
    padding_side: str | None = None,
) -> Path:
    """Write tokenizer.json, tokenizer_config.json, processor_config.json and chat_template.jinja into
    ``folder`` with ``save_pretrained``; then optionally rewrite into the older forms:

    - ``template_file="json"``: chat_template.json ({"chat_template": ...}) instead of chat_template.jinja;
    - ``image_processor_file="preprocessor"``: preprocessor_config.json holding the image processor (plus
      the processor fields, as older llava-hf folders have them) instead of processor_config.json's nested
      "image_processor".

    When the folder has no config.json, a minimal llava one is written (Transformers 5.x picks the
    tokenizer class from config.json's model_type: for "llava" it reads tokenizer.json as it is).
    """
    if template_file not in ("jinja", "json"):
        raise ValueError(f"template_file must be 'jinja' or 'json', got {template_file!r}")
    if image_processor_file not in ("processor", "preprocessor"):
        raise ValueError(f"image_processor_file must be 'processor' or 'preprocessor', got {image_processor_file!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    processor = build_processor(style, image_size, patch_size, strategy, padding_side)
    processor.save_pretrained(folder)

    if template_file == "json":
        jinja = folder / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8")
        jinja.unlink()
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2), encoding="utf-8")
    if image_processor_file == "preprocessor":
        processor_config = folder / "processor_config.json"
        data = json.loads(processor_config.read_text(encoding="utf-8"))
        image_processor = data.pop("image_processor")
        processor_config.unlink()
        (folder / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2), encoding="utf-8")
        # Older llava-hf folders keep the processor's own fields (patch_size, strategy, ...) in a
        # processor_config.json of their own, without the image processor.
        (folder / "processor_config.json").write_text(json.dumps(data, indent=2), encoding="utf-8")

    if not (folder / "config.json").exists():
        write_minimal_config(folder, image_size, patch_size, strategy)
    return folder


def write_minimal_config(folder, image_size: int = 28, patch_size: int = 7, strategy: str = "default") -> None:
    """A small llava config.json whose vision tower matches the processor (no weights)."""
    from transformers import LlavaConfig

    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "vocab_size": 384,
        },
        image_token_index=BASE_VOCAB_SIZE,
        pad_token_id=BASE_VOCAB_SIZE + 1,
        vision_feature_select_strategy=strategy,
    )
    config.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--style", default="llama", choices=STYLES)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--strategy", default="default", choices=("default", "full"))
    parser.add_argument("--template-file", default="jinja", choices=("jinja", "json"))
    parser.add_argument("--image-processor-file", default="processor", choices=("processor", "preprocessor"))
    args = parser.parse_args()
    folder = write_processor_files(
        args.out_dir,
        style=args.style,
        image_size=args.image_size,
        patch_size=args.patch_size,
        strategy=args.strategy,
        template_file=args.template_file,
        image_processor_file=args.image_processor_file,
    )
    print(f"wrote {', '.join(sorted(p.name for p in folder.iterdir()))} to {folder}")


if __name__ == "__main__":
    main()
