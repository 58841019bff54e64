"""One benchmark per module: how its files are read and how its answers are scored."""
