"""Training: the one trainer (:mod:`.loop`) and the data-driven defaults (:mod:`.auto`)."""
