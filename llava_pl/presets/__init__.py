"""Architecture data of the real backbones the presets in ``conf/model`` name, carried so they build offline."""
