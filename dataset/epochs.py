"""The epoch counter both loader kinds share: all randomness of epoch ``e`` derives from
``(seed, e)``, so ``set_epoch`` (or a restored ``state_dict``) replays an epoch exactly."""
from __future__ import annotations


class SeededEpochs:
    """Mixin: ``seed``, the epoch the next iteration will use, and their state dict."""

    seed: int
    _epoch: int

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will use."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw epoch ``epoch``'s randomness (reproducible resume)."""
        self._epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self._epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self._epoch = int(state["seed"]), int(state["epoch"])
