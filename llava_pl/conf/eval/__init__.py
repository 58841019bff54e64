"""The evaluation CLI's config and the tasks group; train.yaml adds this folder to its search path
(pkg://llava_pl.conf.eval), so both select tasks=[...] from the same files."""
