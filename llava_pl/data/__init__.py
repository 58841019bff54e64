"""Data: LLaVA JSON conversations, templates and label masking, images, batching."""
