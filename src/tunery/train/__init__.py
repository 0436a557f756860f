"""Training: the one loop Tunery owns (``loop``), the stages that plug into it
(``stages``), checkpoints, logging and ``run.run_training``, the entry point
from a RunConfig to a trained model on disk.

Import ``tunery.train.run`` (or ``tunery.train.loop``) directly; this package
module stays light so that importing ``tunery.train`` costs nothing.
"""
