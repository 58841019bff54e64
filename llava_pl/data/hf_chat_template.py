"""A llava_pl template as a Hugging Face chat template (Jinja), for exported folders.

The Jinja renders the text the template's ``segments`` give, so ``processor.apply_chat_template`` prompts an
exported model as it was trained. It takes Hugging Face's multimodal messages (content as a list of
``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts) and plain strings alike, and places the image as
llava_pl's data path does: with one image in the conversation, ``<image>`` goes first in its message, followed by a
newline (``llava_pl.data.conversation.parse_record``). No BOS is written: the tokenizer adds it.

llava_pl (like LLaVA's ``tokenizer_image_token``) tokenizes the text between images piece by piece, while Hugging
Face's processor tokenizes the whole prompt. A SentencePiece tokenizer puts "▁" before a piece's first word but not
before text that follows a special token, so for such a tokenizer the Jinja writes one space after each run of
image placeholders (unless the text there starts with one): both ways then give the training ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from llava_pl.constants import IMAGE_PLACEHOLDER
from llava_pl.data.conversation import Message
from llava_pl.data.templates import ChatTemplate, PlainTemplate, Template, VicunaTemplate

_BODY = "{#- llava_pl: the model's own template -#}"
_BODY_END = "{#- llava_pl: end of the model's own template -#}"
_ANSWER = "\x00answer\x00"  # a probe answer, found again in the template's segments
_PROBES = ("\nWhat is in the image?", "What", " a, b", "1 2\n")  # text that may follow an image


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


_IMAGE = _literal(IMAGE_PLACEHOLDER)

# Rebinds ``messages`` to the same messages with string content: list parts joined by newlines, the image first
# when the conversation has one.
_CONTENT_TO_TEXT = (
    "{%- set llava = namespace(messages=[], images=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string or message['content'] is none -%}"
    "{%- set llava.messages = llava.messages + [message] -%}"
    "{%- else -%}{%- set parts = namespace(texts=[]) -%}"
    "{%- for part in message['content'] -%}"
    f"{{%- if part['type'] == 'image' -%}}{{%- set parts.texts = parts.texts + [{_IMAGE}] -%}}"
    "{%- elif part['type'] == 'text' -%}{%- set parts.texts = parts.texts + [part['text']] -%}"
    "{%- else -%}{{- raise_exception('llava_pl exports take text and image content parts, not ' + part['type']) -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set llava.messages = llava.messages + [{'role': message['role'], 'content': parts.texts | join('\\n')}] -%}"
    "{%- endif -%}"
    f"{{%- set llava.images = llava.images + (llava.messages[-1]['content'] or '').count({_IMAGE}) -%}}"
    "{%- endfor -%}"
    "{%- set placed = namespace(messages=[]) -%}"
    "{%- for message in llava.messages -%}"
    f"{{%- if llava.images == 1 and {_IMAGE} in (message['content'] or '') -%}}"
    f"{{%- set placed.messages = placed.messages + [{{'role': message['role'], 'content': {_IMAGE} + '\\n' + "
    f"message['content'].replace({_IMAGE}, '').strip()}}] -%}}"
    "{%- else -%}{%- set placed.messages = placed.messages + [message] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = placed.messages -%}"
)

# Wraps a body: its output, with a space after each run of image placeholders that text follows.
_SPACE_OPEN = "{%- set llava_rendered -%}"
_SPACE_CLOSE = (
    "{%- endset -%}"
    f"{{%- set llava_pieces = llava_rendered.split({_IMAGE}) -%}}"
    "{{- llava_pieces[0] -}}"
    f"{{%- for piece in llava_pieces[1:] -%}}{{{{- {_IMAGE} -}}}}"
    "{%- if piece and not piece.startswith(' ') -%}{{- ' ' -}}{%- endif -%}{{- piece -}}{%- endfor -%}"
)


def _answer_affixes(template: Template, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """What the template writes before and after an assistant answer."""
    messages = [Message("user", f"{IMAGE_PLACEHOLDER}\nq"), Message("assistant", _ANSWER)]
    answer = next(s.text for s in template.segments(messages, tokenizer) if _ANSWER in s.text)
    before, after = answer.split(_ANSWER)
    return before, after


def _vicuna(template: VicunaTemplate, tokenizer: PreTrainedTokenizerBase) -> str:
    before, after = _answer_affixes(template, tokenizer)
    return (
        f"{{%- set vicuna = namespace(system={_literal(template.system)}, first=true) -%}}"
        "{%- for message in messages if message['role'] == 'system' -%}"
        "{%- if loop.first -%}{%- set vicuna.system = message['content'] -%}{%- endif -%}{%- endfor -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if vicuna.first -%}{{- vicuna.system + ' ' -}}{%- set vicuna.first = false -%}{%- endif -%}"
        "{{- 'USER: ' + message['content'] + ' ASSISTANT:' -}}"
        f"{{%- elif message['role'] == 'assistant' -%}}{{{{- {_literal(before)} + message['content'] + "
        f"{_literal(after)} -}}}}"
        "{%- endif -%}{%- endfor -%}"
    )


def _plain(template: PlainTemplate, tokenizer: PreTrainedTokenizerBase) -> str:
    before, after = _answer_affixes(template, tokenizer)
    return (
        "{%- set dialogue = messages | rejectattr('role', 'equalto', 'system') | list -%}"
        "{%- if dialogue | length > 2 -%}"
        "{{- raise_exception('the plain template takes one caption pair') -}}{%- endif -%}"
        "{%- for message in dialogue -%}"
        f"{{%- if message['role'] == 'user' -%}}{{{{- {_literal(template.begin)} + "
        f"{_IMAGE} * message['content'].count({_IMAGE}) -}}}}"
        f"{{%- else -%}}{{{{- {_literal(before)} + message['content'] + {_literal(after)} -}}}}"
        "{%- endif -%}{%- endfor -%}"
    )


def _chat(template: ChatTemplate, tokenizer: PreTrainedTokenizerBase) -> str:
    source = getattr(tokenizer, "chat_template", None)
    if not isinstance(source, str) or not source:
        raise ValueError(f"{type(tokenizer).__name__} has no chat_template (a single Jinja string), so the model "
                         "cannot have trained with ChatTemplate")
    if _BODY in source and _BODY_END in source:  # an export's own template, exported again: its original body
        source = source.split(_BODY, 1)[1].split(_BODY_END, 1)[0]
    return source


_BODIES: tuple[tuple[type, Callable[..., str]], ...] = (
    (VicunaTemplate, _vicuna), (PlainTemplate, _plain), (ChatTemplate, _chat)
)


def space_after_images(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a whole prompt needs a space after an image run to tokenize as llava_pl tokenizes it in pieces.

    ``ValueError`` when neither way reproduces the pieces' ids (the tokenizer must know ``<image>``).
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def whole_matches(space: str) -> bool:
        return all(ids(IMAGE_PLACEHOLDER + (space if not p.startswith(" ") else "") + p) == [image_id, *ids(p)]
                   for p in _PROBES)

    if whole_matches(""):
        return False
    if whole_matches(" ") and all(ids(" " + p) == ids(p) for p in _PROBES if not p.startswith(" ")):
        return True
    raise ValueError(f"{type(tokenizer).__name__} tokenizes the text after an image differently in a whole prompt "
                     "than on its own, and a space does not make up for it: a Hugging Face processor would not "
                     "give the model its training ids")


def hf_chat_template(template: Template, tokenizer: PreTrainedTokenizerBase) -> str:
    """The Jinja chat template that renders conversations as ``template`` does for ``tokenizer``.

    For ``ChatTemplate`` it is the tokenizer's own template, reading list content too; re-exporting an export
    does not wrap it twice. ``tokenizer`` must know ``<image>`` (``space_after_images`` probes it).
    """
    make = next((make for kind, make in _BODIES if isinstance(template, kind)), None)
    if make is None:
        raise ValueError(f"no Hugging Face chat template is known for {type(template).__name__}")
    body = _BODY + make(template, tokenizer) + _BODY_END
    if space_after_images(tokenizer):
        body = _SPACE_OPEN + body + _SPACE_CLOSE
    return _CONTENT_TO_TEXT + body
