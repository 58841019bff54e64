"""The Hydra configs, a package so that a config can add a folder of it to its search path (pkg://)."""
