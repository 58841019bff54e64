"""Talk to a trained model in the terminal: answers stream as they are generated.

    python -m llava_pl.chat model=PATH image=IMG
    python -m llava_pl.chat model=PATH image=IMG temperature=0 max_new_tokens=128

PATH is a llava_pl Lightning checkpoint or an exported Hugging Face Llava folder; the other settings are in
conf/chat/. At the prompt, a line is a question (earlier exchanges are part of the conversation), and:

    /image PATH   talk about another image (starts a new conversation)
    /reset        forget the conversation, keep the image
    /quit         leave (so does Ctrl-D); Ctrl-C stops an answer
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TextIO

import hydra
from omegaconf import DictConfig
from PIL import Image

from llava_pl.chat_engine import ChatInputError, ChatModel, Conversation, Sampling, open_image
from llava_pl.cli import require_keys
from llava_pl.config_dir import CONF_DIR
from llava_pl.errors import ConfigError, reports_user_errors

HELP = """Commands: /image PATH (a new conversation about another image), /reset (forget the conversation),
/quit or Ctrl-D (leave). Ctrl-C stops an answer."""
USAGE = "python -m llava_pl.chat model=PATH [image=IMG] [temperature=0.2 max_new_tokens=512 ...]  (--help: every key)"
USER_PROMPT = "You: "
MODEL_PREFIX = "Model: "


class TerminalChat:
    """The read-answer loop, reading lines from ``input`` and streaming answers to ``output``."""

    def __init__(self, chat: ChatModel, sampling: Sampling, output: TextIO = sys.stdout) -> None:
        self.chat = chat
        self.sampling = sampling
        self.output = output
        self.conversation = Conversation()

    def say(self, text: str) -> None:
        print(text, file=self.output, flush=True)

    def set_image(self, path: str, image: Image.Image | None = None) -> None:
        """Starts a new conversation about the image at ``path`` (already read: ``image``); an unreadable one
        leaves everything as it was."""
        image = open_image(path) if image is None else image
        self.conversation = Conversation(self.chat.image_tensor(image))
        self.say(f"[image {path}: {image.width}x{image.height}; new conversation]")

    def handle(self, line: str) -> bool:
        """Acts on one input line; ``False`` once the user leaves."""
        line = line.strip()
        command, _, argument = line.partition(" ")
        if command in ("/quit", "/exit"):
            return False
        if command == "/reset":
            self.conversation.reset()
            self.say("[conversation cleared]")
        elif command == "/image":
            if not argument.strip():
                self.say("[usage: /image PATH]")
            else:
                self._refusing_bad_input(lambda: self.set_image(argument.strip()))
        elif command in ("/help", "/?"):
            self.say(HELP)
        elif command.startswith("/"):
            self.say(f"[unknown command {command}] {HELP}")
        elif line:
            self._refusing_bad_input(lambda: self.ask(line))
        return True

    def ask(self, question: str) -> None:
        stop = threading.Event()
        answer = self.chat.answer(self.conversation, question, self.sampling, stop)
        print(MODEL_PREFIX, end="", file=self.output, flush=True)
        try:
            for piece in answer:
                print(piece, end="", file=self.output, flush=True)
        except KeyboardInterrupt:
            stop.set()
            answer.close()
            print(" [stopped]", end="", file=self.output)
        self.say("")

    def _refusing_bad_input(self, action: Callable[[], None]) -> None:
        try:
            action()
        except ChatInputError as error:
            self.say(f"[{error}]")

    def run(self) -> None:
        while True:
            try:
                line = input(USER_PROMPT)
            except EOFError:
                self.say("")
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line
                self.say("")
                continue
            if not self.handle(line):
                return


def chat(cfg: DictConfig) -> None:
    require_keys(cfg, ["model"], USAGE)
    try:
        sampling = Sampling.from_config(cfg)
        image = open_image(str(cfg.image)) if cfg.image is not None else None
    except ChatInputError as error:
        raise ConfigError(str(error)) from error
    model = ChatModel.from_config(cfg)
    session = TerminalChat(model, sampling)
    memory = "" if model.remembers_turns else " (this template answers one question at a time: no memory)"
    session.say(f"llava_pl chat: {cfg.model}\ntemplate {model.template_name}{memory}, "
                f"{model.loaded.model.tokens_per_image} image tokens, context {model.context_length or 'unknown'}")
    session.say(HELP)
    if image is not None:
        session.set_image(str(cfg.image), image)
    else:
        session.say("[no image: text only until /image PATH]")
    try:
        import readline  # noqa: F401  line editing and history for input()
    except ImportError:
        pass
    session.run()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "chat"), config_name="chat")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    chat(cfg)


if __name__ == "__main__":
    main()
