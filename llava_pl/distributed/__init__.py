"""Scaling out: the sharding strategies (FSDP2, DeepSpeed ZeRO) and their checkpoints."""
