"""Surviving faults: atomic checkpoints, graceful stop, non-finite losses, full disks and out-of-memory errors.

Import from the modules (``atomic`` has no Lightning dependency, so writers such as ``projector_io`` stay light).
"""
