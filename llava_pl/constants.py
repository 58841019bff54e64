"""Token ids and strings shared by the data pipeline and the model."""

IGNORE_INDEX = -100
"""Label value that the loss skips (PyTorch's cross-entropy default)."""

IMAGE_TOKEN_ID = -200
"""Id that marks one image-feature position in ``input_ids``; never a real vocabulary id, so the
tokenizer needs no extra token and no embedding resize (LLaVA's convention)."""

IMAGE_PLACEHOLDER = "<image>"
"""Where an image goes in the text of a LLaVA JSON conversation."""
