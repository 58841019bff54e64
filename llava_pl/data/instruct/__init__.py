"""Language-only generation of visual instruction data (LLaVA's recipe): a chat LLM that never sees the image
writes conversations, detailed descriptions and reasoning questions from its captions and object boxes."""
