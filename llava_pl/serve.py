"""A local web page to talk to a trained model: upload an image, ask, watch the answer stream in.

    pip install -e ".[demo]"
    python -m llava_pl.serve model=PATH                  # http://127.0.0.1:7860, this machine only
    python -m llava_pl.serve model=PATH host=0.0.0.0     # deliberately reachable from other machines

PATH is a llava_pl Lightning checkpoint or an exported Hugging Face Llava folder; settings are in
conf/chat/serve.yaml. The page is built with Gradio, with its telemetry off and no share link. Everyone who
opens the page has their own conversation; answers are generated one at a time.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import hydra
from omegaconf import DictConfig

from llava_pl.chat_engine import ChatInputError, ChatModel, Conversation, Sampling, open_image
from llava_pl.cli import require_keys
from llava_pl.config_dir import CONF_DIR
from llava_pl.errors import ConfigError, UserError, reports_user_errors


DEMO_INSTALL = 'pip install -e ".[demo]"'
USAGE = "python -m llava_pl.serve model=PATH [host=127.0.0.1 port=7860 ...]  (--help: every key)"
EMPTY_ANSWER = "(no answer: the model ended its turn at once)"
ChatHistory = list[dict[str, str]]


class DemoHandlers:
    """What the page's events do, kept apart from the layout so that tests can call them directly.

    Each browser session holds a ``Conversation`` (Gradio state). Bad input never raises into Gradio: the
    returned status text says what is wrong and the conversation stays as it was.
    """

    def __init__(self, chat: ChatModel, max_image_pixels: int | None) -> None:
        self.chat = chat
        self.max_image_pixels = max_image_pixels

    def load_image(self, path: str | None, conversation: Conversation | None) -> tuple[Any, ...]:
        """An uploaded file → ``(conversation, preview image, chat history, status, file value)``.

        A new image starts a new conversation; a refused one leaves conversation, preview and history alone.
        """
        from gradio import skip

        if path is None:  # the upload was removed
            return Conversation(), None, [], "Image removed: a new conversation, text only.", None
        try:
            image = open_image(path, self.max_image_pixels)
            tensor = self.chat.image_tensor(image)
        except ChatInputError as error:
            return conversation, skip(), skip(), f"**Image refused:** {error}", None
        status = f"Image {os.path.basename(path)} ({image.width}x{image.height}): a new conversation."
        return Conversation(tensor), image, [], status, skip()

    def reset(self, conversation: Conversation | None) -> tuple[Conversation, ChatHistory, str]:
        conversation = conversation or Conversation()
        conversation.reset()
        return conversation, [], "Conversation cleared; the image stays."

    def respond(
        self,
        question: str,
        history: ChatHistory | None,
        conversation: Conversation | None,
        temperature: float,
        top_p: float,
        max_new_tokens: float,
    ) -> Iterator[tuple[str, ChatHistory, Conversation, str]]:
        """Streams ``(question box, chat history, conversation, status)`` while the answer is generated."""
        conversation = conversation or Conversation()
        history = list(history or [])
        try:
            sampling = Sampling(float(temperature), float(top_p), int(max_new_tokens))
            if not (question or "").strip():
                raise ChatInputError("the question is empty: type something to ask")
            answer = self.chat.answer(conversation, question, sampling)
            history += [{"role": "user", "content": question.strip()}, {"role": "assistant", "content": ""}]
            yield "", history, conversation, "Answering…"
            text = ""
            for piece in answer:
                text += piece
                history[-1] = {"role": "assistant", "content": text}
                yield "", history, conversation, "Answering…"
            history[-1] = {"role": "assistant", "content": text.strip() or EMPTY_ANSWER}
            yield "", history, conversation, ""
        except ChatInputError as error:
            yield question, history, conversation, f"**Not sent:** {error}"
        except Exception as error:  # the page must survive whatever generation does (e.g. out of memory)
            traceback.print_exc(file=sys.stderr)
            yield question, history, conversation, f"**Generation failed:** {type(error).__name__}: {error}"


def build_demo(chat: ChatModel, cfg: DictConfig, title: str) -> Any:
    """The Gradio page; element ids (``#image-upload``, ``#question``, ``#send``, ``#chat``, ``#status``, …)
    are stable for browser tests."""
    import gradio as gr

    handlers = DemoHandlers(chat, cfg.max_image_pixels)
    token_limit = max(1, min(chat.context_length or 4096, 4096))
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        conversation = gr.State(None)
        gr.Markdown(f"## {title}\nUpload an image, then ask about it. A new image starts a new conversation.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", type="filepath", elem_id="image-upload")
                preview = gr.Image(label="Current image", type="pil", interactive=False, elem_id="image-preview",
                                   height=240)
                with gr.Accordion("Sampling", open=True):
                    temperature = gr.Slider(0.0, 2.0, value=float(cfg.temperature), step=0.05,
                                            label="Temperature (0: greedy)", elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=float(cfg.top_p), step=0.05, label="Top-p", elem_id="top-p")
                    max_tokens = gr.Slider(1, token_limit, value=min(int(cfg.max_new_tokens), token_limit), step=1,
                                           label="Max new tokens", elem_id="max-tokens")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=420)
                status = gr.Markdown(elem_id="status")
                question = gr.Textbox(show_label=False, placeholder="Ask about the image and press Enter",
                                      elem_id="question", lines=1)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    reset = gr.Button("New conversation", elem_id="reset")

        upload.upload(handlers.load_image, [upload, conversation], [conversation, preview, chatbot, status, upload])
        upload.clear(handlers.load_image, [upload, conversation], [conversation, preview, chatbot, status, upload])
        ask_inputs = [question, chatbot, conversation, temperature, top_p, max_tokens]
        ask_outputs = [question, chatbot, conversation, status]
        # one queue for both ways of asking: the model answers one question at a time
        asked = [send.click(handlers.respond, ask_inputs, ask_outputs, concurrency_id="answer"),
                 question.submit(handlers.respond, ask_inputs, ask_outputs, concurrency_id="answer")]
        stop.click(None, cancels=asked)
        reset.click(handlers.reset, [conversation], [conversation, chatbot, status])
    return demo


def _plain_theme() -> Any:
    import gradio as gr

    # system fonts: the default theme would have every browser fetch Google's web fonts
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def serve(cfg: DictConfig) -> None:
    require_keys(cfg, ["model"], USAGE)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise UserError(f"the web demo needs Gradio: {DEMO_INSTALL}") from error
    try:
        Sampling.from_config(cfg)
    except ChatInputError as error:
        raise ConfigError(str(error)) from error
    chat = ChatModel.from_config(cfg)
    title = f"llava_pl: {os.path.basename(os.path.normpath(str(cfg.model)))}"
    demo = build_demo(chat, cfg, title)
    demo.queue(default_concurrency_limit=1)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: listening on {cfg.host}: anyone who can reach this machine on port {cfg.port} can use "
              "the model; there is no login.", flush=True)
    print(f"llava_pl demo at http://{cfg.host}:{cfg.port} (Ctrl-C stops it)", flush=True)
    demo.launch(
        server_name=str(cfg.host),
        server_port=int(cfg.port),
        share=False,
        max_file_size=cfg.max_upload,
        theme=_plain_theme(),
        ssr_mode=False,
        mcp_server=False,
        show_error=True,
        quiet=True,
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "chat"), config_name="serve")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
