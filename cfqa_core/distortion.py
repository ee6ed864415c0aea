"""Ground-truth semantic distortion, exactly as the paper defines it.

Computed by running the task heads on the compressed feature f^ and on the
original f, against ground truth:

- cls: rank of the true label in the logits from f^ (1 = best; originals are
  chosen correctly predicted, so their own rank is 1). Higher = worse.
- seg: mIoU(mask from f^) - mIoU(mask from f), per image. Lower = worse.
- dpt: RMSE(depth from f^) - RMSE(depth from f), per image. Higher = worse.
"""
from __future__ import annotations

from cfqa_core.inference import TaskOutput, task_score
from cfqa_core.tasks import label_rank


def semantic_distortion(output: TaskOutput, reference: TaskOutput, **gt) -> float:
    """Distortion of ``output`` (from f^) relative to ``reference`` (from f); ``gt`` as task_score."""
    if output.task == "cls":
        return float(label_rank(output.logits, int(gt["label"]) - 1))
    return task_score(output, **gt) - task_score(reference, **gt)
