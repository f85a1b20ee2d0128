"""Re-parameterizable conv+BN blocks, their registry, and the one model converter.

Structural re-parameterization (Ding et al., RepVGG, CVPR 2021; KDrefine's AMBB): a block is
trained as a sum of conv+BN branches and converted after training into one conv with a bias.
The package is split by concern:

* :mod:`.registry` -- the block-type registry (:data:`BLOCK_TYPES`, :data:`DEFAULT_BLOCKTYPE`),
  the conv+BN factory of the model constructors (:func:`make_conv_bn`, :func:`block_factory`)
  and the model-level helpers (:func:`reparameterize_model`, :func:`set_fused`,
  :func:`state_dict_forms`);
* :mod:`.blocks` -- the blocks: :class:`ConvBN` (``base``), :class:`AMBB`, :class:`ACB`,
  :class:`RepVGGBlock` (see that module for the papers and the departures from the original);
* :mod:`.kernels` -- the fused-BN training kernels and their ``torch.func.vmap`` workarounds.

Importing the package registers every block type.
"""
from .registry import (BASE_BLOCKTYPE, BLOCK_TYPES, DEFAULT_BLOCKTYPE, ConvBNFactory, block_factory,
                       get_block_type, make_conv_bn, register_block_type, reparameterize_model,
                       set_fused, state_dict_forms)
from .blocks import ACB, AMBB, Branch, ConvBN, RepBlock, RepVGGBlock  # noqa: E402  (registers)

__all__ = [
    "Branch",
    "ConvBN",
    "RepBlock",
    "AMBB",
    "ACB",
    "RepVGGBlock",
    "BLOCK_TYPES",
    "BASE_BLOCKTYPE",
    "DEFAULT_BLOCKTYPE",
    "register_block_type",
    "get_block_type",
    "make_conv_bn",
    "block_factory",
    "ConvBNFactory",
    "reparameterize_model",
    "set_fused",
    "state_dict_forms",
]
