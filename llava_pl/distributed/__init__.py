"""Scaling out: the sharding strategies (FSDP2, DeepSpeed ZeRO). Their checkpoints are ``llava_pl.checkpoint``'s."""
