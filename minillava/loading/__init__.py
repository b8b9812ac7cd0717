"""Loading: everything that touches files, Pillow or the tokenizer, and feeds the model.

files.py          reading a folder's JSON files (one reader, one kind of error)
config.py         config.json -> LlavaConfig, every omitted field filled as Transformers fills it
safetensors.py    the safetensors format, memory-mapped, float32/float16/bfloat16
weights.py        the checkpoint's key layouts -> the nested dict of parameters, shapes checked
checkpoint.py     load_model: a folder (or hub id) -> LlavaModel
preprocess.py     image -> pixel_values, as CLIP's image processor
chat_template.py  conversation -> prompt
processor.py      prompts and images -> input_ids, attention_mask, pixel_values; ids -> text
"""
