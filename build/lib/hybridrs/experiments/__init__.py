"""Supporting code of the book's chapters: run profiles, seeding and result files
(:mod:`~hybridrs.experiments.notebook`), and chapter 8's resumable experiment loops
(:mod:`~hybridrs.experiments.protocols`).  Nothing in the core imports from here."""
