"""Chat templates: a conversation (a list of messages) becomes the prompt string the model was trained on.

The two templates of the llava-hf checkpoints minillava runs are rendered in plain Python: llava-1.5's
(llava-hf/llava-1.5-7b-hf's chat_template.json) by ``render_llava_15`` and llava-interleave's
(llava-hf/llava-interleave-qwen-0.5b-hf's and -7b-hf's, a Qwen-style ChatML format) by
``render_llava_interleave``. They are the reference here, because each shows its format in ten lines and needs
no Jinja; ``native_renderer`` recognises a template by its text (``_template_signature``). Any other template is
rendered with Jinja by ``render_jinja``, set up as Transformers' ``render_jinja_template``;
``LlavaProcessor.apply_chat_template(..., use_jinja=True)`` renders the two known ones with it too. The native
and Jinja renderers agree on every conversation with typed content parts (the suite checks this on all it
tries); they differ on purpose for a message whose content is a plain string: the native renderers read it as
one text part, while Transformers' templates read only typed parts and render nothing for it (``render_jinja``
keeps that, to reproduce Transformers exactly).
"""

from __future__ import annotations

import os
import re
import reprlib

from PIL import Image

ROLES = ("system", "user", "assistant")
# Where an image part holds its picture, as Transformers' processor reads it when apply_chat_template tokenizes
# (ProcessorMixin._multimodal_inputs_from_conversations): a PIL image or a path under "image", a path under "path",
# a URL under "url". (Transformers also reads "base64"; minillava does not.)
IMAGE_SOURCE_KEYS = ("image", "path", "url")

# The chat template of llava-hf/llava-1.5-7b-hf (chat_template.json; Transformers' own test
# tests/models/llava/test_processing_llava.py quotes it). Rendered natively by `render_llava_15`.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto',"
    " 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# The same template without the assistant branch (which, once {% generation %} is dropped, repeats the user
# branch): renders identically, so it is recognised too.
LLAVA_15_CHAT_TEMPLATE_PLAIN = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto',"
    " 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] |"
    " selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# The chat template of llava-hf/llava-interleave-qwen-0.5b-hf and -7b-hf (chat_template.json, 699 bytes, since the
# hub's PR #6 added the {% generation %} branch). Rendered natively by `render_llava_interleave`.
LLAVA_INTERLEAVE_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}{% else %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ '\n' + content['text'] }}"
    "{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same template without the assistant branch: exactly the size (485 bytes as chat_template.json) of the file
# the 0.5b folder had before PR #6, so most likely its text. Renders identically, so it is recognised too.
LLAVA_INTERLEAVE_CHAT_TEMPLATE_PLAIN = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_llava_15(conversation, add_generation_prompt: bool = False) -> str:
    """The llava-1.5 prompt format, as llava-hf's chat template writes it:

        [system text + " "] "USER: " + "<image>\\n" per image + (text + " ") per text
        "ASSISTANT: " + (text + " ") per text  ...  ["ASSISTANT:" as the generation prompt]

    Images of a message come first, then its texts, whatever their order in the content list; a system
    message has no role prefix; assistant turns end with a space, not </s>. A string content counts as one
    text part (Transformers renders nothing for it: its template only reads typed parts).
    """
    prompt = []
    for message in _check_conversation(conversation, known_roles_only=True):
        parts = _content_parts(message["content"])
        if message["role"] != "system":
            prompt.append(message["role"].upper() + ": ")
        prompt.extend("<image>\n" for part in parts if part["type"] == "image")
        prompt.extend(part["text"] + " " for part in parts if part["type"] == "text")
    if add_generation_prompt:
        prompt.append("ASSISTANT:")
    return "".join(prompt)


def render_llava_interleave(conversation, add_generation_prompt: bool = False) -> str:
    """The llava-interleave prompt format (ChatML, as Qwen's chat models), as llava-hf's chat template writes it:

        "<|im_start|>" + role + "\n" + "<image>" per image + ("\n" + text) per text + "<|im_end|>\n"  ...
        ["<|im_start|>assistant\n" as the generation prompt]

    Images of a message come first, then its texts, whatever their order in the content list; every text
    starts on a new line (so a text-only message reads "<|im_start|>user\n\nWhat?<|im_end|>\n"); no system
    message is added; the role is written as given (any string, as the template does). A string content counts
    as one text part (Transformers renders nothing for it: its template only reads typed parts).
    """
    prompt = []
    for message in _check_conversation(conversation, known_roles_only=False):
        parts = _content_parts(message["content"])
        prompt.append("<|im_start|>" + message["role"] + "\n")
        prompt.extend("<image>" for part in parts if part["type"] == "image")
        prompt.extend("\n" + part["text"] for part in parts if part["type"] == "text")
        prompt.append("<|im_end|>\n")
    if add_generation_prompt:
        prompt.append("<|im_start|>assistant\n")
    return "".join(prompt)


def render_jinja(chat_template: str, conversation, add_generation_prompt: bool = False, **special_tokens) -> str:
    """Render any chat template with Jinja, set up as Transformers' ``render_jinja_template``: a sandboxed
    environment with trim_blocks and lstrip_blocks, loop controls, the ``{% generation %}`` tag, the
    ``raise_exception``/``strftime_now`` globals and a ``tojson`` that keeps non-ASCII. The messages are
    passed as given, except that OpenAI-style "image_url" parts become "image" parts, as Transformers
    converts them; special tokens (bos_token, ...) are template variables."""
    try:
        import jinja2  # (optional: only templates other than llava-1.5's and llava-interleave's need it)
    except ImportError as err:
        raise ImportError(
            "this checkpoint's chat template is not the llava-1.5 one, so it must be rendered with Jinja; "
            "install jinja2 (pip install jinja2)"
        ) from err
    messages = [
        {**message, "content": [_from_image_url(part) for part in message["content"]]}
        if isinstance(message["content"], (list, tuple))
        else message
        for message in _check_conversation(conversation, known_roles_only=False)
    ]
    variables = {name: value for name, value in special_tokens.items() if value is not None}
    try:
        template = _jinja_environment().from_string(chat_template)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"the chat template is not valid Jinja (line {err.lineno}: {err.message})") from None
    try:
        return template.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
        )
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError, RecursionError) as err:
        # A template is a program: whatever it raises on a conversation it does not expect (its own
        # raise_exception, adding a string to a list, a structure nested too deep to print) is its refusal of it.
        raise ValueError(f"the chat template cannot render this conversation ({type(err).__name__}: {err})") from None


def conversation_images(conversation, name: str = "conversation") -> list:
    """The pictures a conversation's image parts carry, in the order their <image> markers appear in its prompt
    (message by message, and in each message in the order of its parts: the templates write a message's images
    first, in order): each a PIL image, a path or an http(s) URL, from {"type": "image", "image" | "path" | "url":
    ...} or OpenAI-style {"type": "image_url", "image_url": {"url": ...}}. Transformers' processor reads them so
    when ``apply_chat_template(..., tokenize=True)``. An image part with no picture, or with two, is a ValueError
    naming it (`name` is how the caller calls the conversation)."""
    images = []
    for i, message in enumerate(_check_conversation(conversation, known_roles_only=False)):
        if isinstance(message["content"], str):  # text only
            continue
        for j, part in enumerate(message["content"]):
            part = _from_image_url(part)
            if not isinstance(part, dict) or part.get("type") != "image":
                continue
            where = f"{name}[{i}]['content'][{j}]"
            if part.get("base64") is not None:
                raise ValueError(
                    f"{where}: minillava does not read 'base64' images; decode it "
                    "(PIL.Image.open(io.BytesIO(base64.b64decode(data)))) and give the PIL image as 'image'"
                )
            keys = [key for key in IMAGE_SOURCE_KEYS if part.get(key) is not None]
            if len(keys) != 1:  # none: nothing to tokenize with; two: Transformers would take both, one image too many
                raise ValueError(
                    f"{where} is an image part with {'no picture' if not keys else 'both ' + ' and '.join(keys)}: "
                    "to tokenize, give one as {'type': 'image', 'image': <PIL image or path>} (or 'path', 'url'); "
                    "or render the prompt with tokenize=False and give the images to processor(images=..., text=...)"
                )
            source = part[keys[0]]
            if not isinstance(source, (Image.Image, str, os.PathLike)):
                raise TypeError(
                    f"{where}[{keys[0]!r}] must be a PIL image, a path or a URL, got {type(source).__name__}"
                )
            images.append(source)
    return images


def is_llava_15_template(chat_template: str) -> bool:
    """Whether the template is llava-1.5's, up to comments, {% generation %} tags and whitespace inside tags."""
    signature = _template_signature(chat_template)
    return signature in (_template_signature(LLAVA_15_CHAT_TEMPLATE), _template_signature(LLAVA_15_CHAT_TEMPLATE_PLAIN))


def is_llava_interleave_template(chat_template: str) -> bool:
    """Whether the template is llava-interleave's, up to comments, {% generation %} tags and whitespace inside
    tags."""
    signature = _template_signature(chat_template)
    return signature in (
        _template_signature(LLAVA_INTERLEAVE_CHAT_TEMPLATE),
        _template_signature(LLAVA_INTERLEAVE_CHAT_TEMPLATE_PLAIN),
    )


def native_renderer(chat_template: str):
    """The plain-Python renderer of a known template (``render_llava_15`` or ``render_llava_interleave``), or
    None for any other template (rendered with Jinja)."""
    if is_llava_15_template(chat_template):
        return render_llava_15
    if is_llava_interleave_template(chat_template):
        return render_llava_interleave
    return None


def _template_signature(template: str) -> str:
    """Comments and {% generation %} tags removed, whitespace outside string literals removed inside tags, the
    escape \\n inside string literals written as a newline. Text outside tags is kept as is (it is output)."""
    template = re.sub(r"\{#.*?#\}", "", template, flags=re.DOTALL)
    if template.endswith("%}\n"):  # trim_blocks drops the newline after a block tag
        template = template[:-1]
    template = re.sub(r"\{\{.*?\}\}|\{%.*?%\}", lambda m: _strip_code_whitespace(m.group()), template, flags=re.DOTALL)
    return template.replace("{%generation%}", "").replace("{%endgeneration%}", "")


def _strip_code_whitespace(code: str) -> str:
    """Drop the whitespace of a Jinja tag that lies outside its quoted strings, and write the escape \\n inside
    them as the newline it stands for (Jinja reads '\\n' and a real newline in a string literal alike)."""
    out, quote, chars = [], None, iter(code)
    for ch in chars:
        if quote and ch == "\\":  # an escape inside a string literal: \n is a newline, \' a quote
            escaped = next(chars, "")
            out.append("\n" if escaped == "n" else ch + escaped)
            continue
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch.isspace():
            continue
        out.append(ch)
    return "".join(out)


def _jinja_environment():
    import json as _json
    from datetime import datetime

    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """{% generation %} ... {% endgeneration %} renders its body (Transformers uses it to mark
        assistant tokens)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return _json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _check_conversation(conversation, known_roles_only: bool) -> list[dict]:
    """Check the shape of a conversation; returns its messages with None-valued keys dropped (as
    Transformers drops them)."""
    if not isinstance(conversation, (list, tuple)) or len(conversation) == 0:
        raise ValueError("conversation must be a non-empty list of messages ({'role': ..., 'content': ...})")
    messages = []
    for i, message in enumerate(conversation):
        if not isinstance(message, dict):
            raise ValueError(
                f"conversation[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}"
            )
        message = {key: value for key, value in message.items() if value is not None}
        role = message.get("role")
        if not isinstance(role, str):
            raise ValueError(f"conversation[{i}] has no 'role' (one of {ROLES})")
        if known_roles_only and role not in ROLES:
            raise ValueError(
                f"conversation[{i}] has the unknown role {reprlib.repr(role)}; the llava-1.5 format knows {ROLES}"
            )
        if "content" not in message:
            raise ValueError(f"conversation[{i}] ({role}) has no 'content'")
        if not isinstance(message["content"], (str, list, tuple)):
            raise ValueError(
                f"conversation[{i}]['content'] must be a string or a list of parts, "
                f"got {type(message['content']).__name__}"
            )
        messages.append(message)
    return messages


def _from_image_url(part):
    """{"type": "image_url", "image_url": {"url": u}} -> {"type": "image", "url": u} (Transformers'
    ProcessorMixin._normalize_conversations)."""
    if isinstance(part, dict) and part.get("type") == "image_url" and "image_url" in part:
        url = part["image_url"].get("url", "") if isinstance(part["image_url"], dict) else part["image_url"]
        return {"type": "image", "url": url}
    return part


def _content_parts(content) -> list[dict]:
    """A message's content as typed parts: a string is one text part; "image_url" parts (OpenAI style)
    are images, as Transformers converts them."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("image", "image_url"):
            parts.append({"type": "image"})
        elif kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"content part {j} is of type 'text' but has no string 'text'")
            parts.append(part)
        else:
            raise ValueError(f"content part {j} must be a dict with 'type' 'text' or 'image', got {reprlib.repr(part)}")
    return parts
