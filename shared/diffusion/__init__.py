"""shared/diffusion: noise processes (categorical, Gaussian) behind one sampling protocol.

Time convention (both processes): 0-indexed t in [0, T-1]; x_t is the latent after t + 1
noising steps; abar_{-1} = 1 is the clean data. See schedules.py.
"""

from shared.diffusion.categorical import CategoricalScheduler, sample_categorical, to_onehot
from shared.diffusion.gaussian import GaussianScheduler
from shared.diffusion.protocol import Generators, Scheduler, random_draw
from shared.diffusion.sampling import cfg_combine, guided_output, sample_loop
from shared.diffusion.schedules import make_betas, make_timesteps

__all__ = [
    "CategoricalScheduler",
    "GaussianScheduler",
    "Generators",
    "Scheduler",
    "cfg_combine",
    "guided_output",
    "make_betas",
    "make_timesteps",
    "random_draw",
    "sample_categorical",
    "sample_loop",
    "to_onehot",
]
