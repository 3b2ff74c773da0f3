"""Re-exports the nnunetv2-selma trainers for nnU-Net's ``nnUNet_extTrainer`` search.

nnU-Net imports this file as a top-level module, so only absolute imports work here.
"""

from nnunetv2_selma.training.semi_trainers import *  # noqa: F401,F403
from nnunetv2_selma.training.ssl_trainers import *  # noqa: F401,F403
from nnunetv2_selma.training.study_variants import *  # noqa: F401,F403
from nnunetv2_selma.training.trainers import *  # noqa: F401,F403
