"""Per-epoch training curves, logged with dvclive so that `dvc plots show/diff` draws them.

Each training stage logs to ``dvclive/<stage>/`` (the plots declared in dvc.yaml read the TSV
files there; kdflow.core.paths.live_dir). dvclive writes no timestamps by default, so the logs
reproduce bit for bit like the metrics. Students log their repeat 0, the model that ships.
"""

from __future__ import annotations

from pathlib import Path

import keras

from kdflow.core.io import writes_discarded


class LearningRateLogger(keras.callbacks.Callback):
    """Put the optimizer's current (scheduled) learning rate into the epoch logs, which
    Keras' History and dvclive then record (Keras does not log it for a schedule)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))


def epoch_logger(directory: Path) -> keras.callbacks.Callback:
    """dvclive's Keras callback writing to ``directory`` and nowhere else: no dvc.yaml edits
    (the plots are declared in the project's dvc.yaml), no experiment of its own (DVC's
    `exp run` already makes one), no report."""
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    if writes_discarded():  # a non-chief worker: curves are the chief's (dvclive would touch .dvc/tmp)
        return keras.callbacks.Callback()
    live = Live(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None)
    return DVCLiveCallback(live=live)
