"""Lightning callbacks that watch a training stage: metrics, sample generations, progress and summary."""
