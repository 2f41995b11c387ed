"""The lean modules: the VQGAN decoder and CLIP's vision tower rebuilt on the same weights.

They keep the frozen weights in the compute dtype once (instead of autocast re-casting them
every step) and hold the same sub-modules as taming's and CLIP's (nothing in those packages
is patched):

- VQGAN decoder (:mod:`~vqclip.fast.decoder`): convolutions whose backward keeps only the
  weight (the weights are frozen, so the input a convolution would save is never needed);
  GroupNorm and SiLU fused into one autograd function with a vectorised channels-last
  backward; attention as one batched matmul per block; optional checkpointing per block.
- CLIP ViT (:mod:`~vqclip.fast.vision`): batch-first blocks (no NLD/LND permutes), the patch
  embedding as one matmul, LayerNorm with fp32 statistics, explicit attention for CLIP's
  short sequences, QuickGELU as SiLU with its 1.702 scale folded into the neighbouring
  weights.

Every module takes any float dtype (fp32, bf16, fp16). Norm weights, the codebook, the
encoder and CLIP's text tower stay in fp32: they are cheap or run once per run.
"""

from vqclip.fast.convert import optimize_models, prepared_precision
from vqclip.fast.decoder import FastAttnBlock, FastDecoder, FastResnetBlock
from vqclip.fast.kernels import Levers, attention, frozen_conv2d, group_norm
from vqclip.fast.vision import FastVisionTransformer

__all__ = [
    "FastAttnBlock",
    "FastDecoder",
    "FastResnetBlock",
    "FastVisionTransformer",
    "Levers",
    "attention",
    "frozen_conv2d",
    "group_norm",
    "optimize_models",
    "prepared_precision",
]
