"""Baselines RepQ is compared with (RepQ paper, Section 5).

* :mod:`repq.baselines.merged_lsq` - merge the trained FP model, then LSQ QAT on the plain net.
* :mod:`repq.baselines.tfmot8` - merge, then tfmot's default 8-bit QAT (a separate process:
  importing tfmot switches TensorFlow to legacy tf_keras; run ``python -m repq.baselines.tfmot8``).
"""

from repq.baselines.merged_lsq import flatten_model, merged_lsq_model

__all__ = ["flatten_model", "merged_lsq_model"]
