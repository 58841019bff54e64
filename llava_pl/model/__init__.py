"""The model: vision encoder, projector, language model and the module that splices them together."""
