"""A Ray scheduler's state kept in the experiment, for a resumed sweep (imports neither torch
nor Ray; pyarrow when it reads or writes)."""

from __future__ import annotations

__all__ = ["PersistedState"]


class PersistedState:
    """A Ray scheduler whose state lives in a file of the experiment as well as in memory.

    Tune keeps no scheduler state across a resume (a resumed sweep gets the scheduler as
    ``tuner.pkl`` holds it, from before the first trial). A subclass says what its state is
    (``_state`` -> a JSON-able dict, ``_set_state``), calls :meth:`_load` before each decision
    and :meth:`_persist_if_changed` after it; a pickled copy reads the file back before its
    first decision. On S3 a put is atomic; locally the file is replaced atomically.
    """

    def _init_persisted(self, where: dict, name: str) -> None:
        """Keep the state in ``name`` of the experiment ``where`` says (``build_scheduler``'s)."""
        self._state_file = f"{where['exp_dir']}/{name}"
        self._remote, self._endpoint_url = where.get("remote", False), where.get("endpoint_url")
        self._loaded = True  # a new sweep starts from its constructor's state
        self._filesystem = None
        self._written = None

    def __getstate__(self):
        state = self.__dict__.copy()
        # A pickled copy is what a resumed sweep gets back (tuner.pkl): it reads the state kept.
        state["_loaded"], state["_filesystem"], state["_written"] = False, None, None
        return state

    @property
    def _fs(self):
        from raytune_opt import storage

        if self._filesystem is None:
            self._filesystem = storage.filesystem(self._remote, self._endpoint_url)
        return self._filesystem

    def _load(self) -> None:
        if self._loaded:
            return
        import json

        from raytune_opt import storage

        text = storage.read_text(self._fs, self._state_file)
        if text is not None:
            self._set_state(json.loads(text))
        self._loaded = True

    def _persist_if_changed(self) -> None:
        import json

        from raytune_opt import storage

        text = json.dumps(self._state(), indent=1)
        if text != self._written:
            storage.write_text(self._fs, self._state_file, text, self._remote)
            self._written = text
