"""Training metrics that are computed rather than read: model FLOPs, peak throughput, data waits."""
