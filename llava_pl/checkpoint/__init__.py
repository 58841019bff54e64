"""Checkpoints: saving, loading, consolidating, resuming. Import from the modules; this file imports nothing.

Writing
    ``atomic``         atomic writes of any file or folder (``<name>.partial``, fsync, rename), ``DiskFullError``,
                       sweeping leftovers of killed writes (``remove_partial_files``)
    ``lightning_io``   ``AtomicCheckpointIO``, Lightning's checkpoint plugin: atomic saves, loads of every format
    ``projector_file`` the projector's weights as ``projector.safetensors`` (the align → finetune hand-off)

Reading
    ``sharded``        any strategy's checkpoint as one dict (``load_checkpoint``): a file, an FSDP ``.distcp``
                       folder or a DeepSpeed folder consolidated in memory
    ``consolidate``    ``python -m llava_pl.checkpoint.consolidate DIR OUT.ckpt``: a sharded folder as one file
    ``load``           a model from a checkpoint's weights (``model_from_checkpoint``); a model, tokenizer,
                       template and image transform for inference from a ``.ckpt`` or an exported folder
                       (``load_for_inference``: ``export``, ``evaluate``, ``predict``, ``chat``, ``serve``)

Resuming
    ``resume``         where each stage's ``last.ckpt`` lies, which stages are complete, which stage resumes
                       from which checkpoint (``resume_plan``, for ``ckpt_path=last`` or a path)
    ``resize``         ``ResumeOnAnyWorldSize``: a checkpoint's loop positions translated to another world size
    ``unshard``        after a stage under FSDP or ZeRO, the trained model as one plain module again

Layering: ``atomic``, ``sharded`` and ``projector_file`` depend on nothing above ``model/`` and are what
``model/`` and ``distributed/`` read and write through; ``load``, ``unshard`` and ``resume`` build on
``model/`` and ``distributed/``. Nothing here imports the recipe (``train``), the tools or the callbacks.
"""
