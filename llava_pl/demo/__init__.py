"""The embedded demo that ``python train.py`` runs (``conf/experiment/demo.yaml``): a synthetic "shapes" data set
generated on first use (``scenes``, ``questions``, ``descriptions``, ``dataset``), the small tokenizer trained on
its text (``tokenizer``), its evaluation tasks and results table, and its end-of-run report."""
