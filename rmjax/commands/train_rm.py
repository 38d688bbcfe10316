"""``rmjax train-rm``: train a Bradley–Terry reward model (``rmjax.rm.trainer``)."""

from __future__ import annotations

from rmjax.parallel.distributed import is_primary
from rmjax.rm import trainer as rm_trainer


def run(config) -> None:
  result = rm_trainer.train(config)
  if not is_primary():  # every process has the same result; one prints it
    return
  metrics = result["eval"]
  if metrics:
    print("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
  else:  # the loop evaluates at its last step, so no step ran: the run was already done
    print(f"held-out: not evaluated: {result['workdir']} had already reached "
          f"train.steps={config.train.steps}, so no step ran (raise train.steps to train "
          "further)")
  print(f"checkpoints, metrics.jsonl, TensorBoard logs and {result['plot']} are in "
        f"{result['workdir']}")
