"""Surviving faults: graceful stop (preemption), non-finite losses and out-of-memory errors. Import from the modules.

Atomic checkpoints and full disks are the checkpoint package's (``llava_pl.checkpoint.atomic``, ``lightning_io``).
"""
