"""Base classifiers: small MNIST networks and their training loop (:mod:`~hybridrs.models.nets`),
the prompt-safety filter of chapters 4–5 (:mod:`~hybridrs.models.safety`), and the multimodal
safety filters of chapter 8 (:mod:`~hybridrs.models.fusion`)."""
