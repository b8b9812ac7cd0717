"""The model: LLaVA's math as functions over plain arrays, NumPy on the CPU and CuPy on a GPU.

Read in data-flow order:

    layers.py      linear, LayerNorm, RMSNorm, activations, softmax: the shared pieces
    attention.py   scaled dot-product attention, masks, grouped-query heads
    clip.py        CLIP (llava-1.5): patch embedding, embeddings, encoder layers, feature selection
    siglip.py      SigLIP (llava-interleave): CLIP's encoder with other embeddings
    projector.py   the two-layer MLP from CLIP features to word embeddings
    merge.py       image features into the image-token positions
    rope.py        rotary position embeddings
    kv_cache.py    the preallocated key/value cache
    llama.py       token embedding, decoder layers, the language model, lm_head (Llama; Qwen2 by its config)
    quantize.py    weights kept as 8- or 4-bit integers with scales (int8, int4, NF4), turned back where used
    blocked.py     weights at rest multiplied a block of rows at a time (the fast decode step on a CPU)
    fused.py       RMSNorm, SwiGLU, RoPE and the softmax as fused GPU kernels, beside their plain twins
    llava.py       the glue: LlavaModel (encode_image, forward, step, generate, loss, loss_and_gradients)
    generate.py    logits processors, sampling and the generation loop
    static_step.py the decode step on fixed shapes, recorded once as a CUDA graph and replayed
    loss.py        the next-token cross-entropy, with labels (-100: not learnt)
    training.py    the loss and its gradients: the forward, then each module's backward (beside its forward)
    optim.py       AdamW and the warm-up + cosine learning rate

and beside them: config.py (what the model is: its sizes), backend.py (NumPy or CuPy), trace.py
(recording named activations). Nothing here reads a file: minillava.loading does that.
"""
