"""Base classifiers: small MNIST networks and their training loop (:mod:`~hybridrs.models.nets`),
the prompt-safety filter of chapters 4–5 (:mod:`~hybridrs.models.safety`), the multimodal
safety filters of chapter 8 (:mod:`~hybridrs.models.fusion`), and Hugging Face vision-language
safety filters wrapped for smoothing on a GPU (:mod:`~hybridrs.models.vlm`)."""
