"""Library messages that say nothing about a llava_pl run, silenced one by one at the start of the recipe and of
every command (``llava_pl.errors.reports_user_errors``). Each filter names its message, its category and the
module that emits it, so that any other warning of the same library still shows. Messages llava_pl causes are
fixed where they arise instead (docs/monitoring.md, "What a run prints", lists both kinds)."""

from __future__ import annotations

import logging
import warnings

# (message regex, category, emitting module regex): Python warnings
WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # torch deprecates LeafSpec; Lightning 2.6's own tree flattening still builds one on every step
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # the frozen parts of the model are in eval mode on purpose (LlavaModule.train: no dropout, no statistics).
    # Lightning's PossibleUserWarning is a UserWarning: named by its base, this module needs no Lightning import
    # (the commands answer --help before anything heavy is loaded)
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning,
     r"lightning\.pytorch\.loops\.fit_loop"),
    # LoRA runs: peft reads transformers' deprecated alias (getattr(model, "is_gradient_checkpointing", True))
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)

# (logger, message prefix): log records, e.g. Lightning's "💡 Tip: ... litlogger" / "... litmodels" adverts
LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    ("lightning.fabric.utilities.rank_zero", "💡 Tip:"),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_libraries() -> None:
    """Installs the filters above; calling it again adds nothing."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)  # replaces a duplicate
    for name, prefix in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
