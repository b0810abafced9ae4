"""A user module that fails while it is imported."""

raise RuntimeError("the model module is broken on purpose")
