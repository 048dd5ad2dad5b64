"""abo-jax: LoRA-enabled federated learning in JAX.

Pure-function LoRA layers, aggregation-broadcast operators (ABOs), and a vmapped client simulator.
The convergence theory lives in the separate ``theory`` package (which imports ``abo_jax``).

Reference: Chen et al., Convergence Analysis of Aggregation-Broadcast in LoRA-enabled Federated
Learning, arXiv:2508.01348.
"""

from abo_jax import aggregation, data, lora, models, simulation
from abo_jax.aggregation import *
from abo_jax.data import *
from abo_jax.lora import *
from abo_jax.models import *
from abo_jax.simulation import *

__version__ = "0.1.0"

__all__ = [
    *lora.__all__,
    *aggregation.__all__,
    *data.__all__,
    *models.__all__,
    *simulation.__all__,
]
