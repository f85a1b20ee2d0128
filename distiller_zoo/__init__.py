"""The distiller zoo: the loss functions of the CRD benchmark (RepDistiller) and KDrefine, their
helper modules, and one method object per ``--distill`` name (:func:`build_method`).

Loss classes keep the names and call signatures of the original code; those that compare a list
of feature pairs (``Attention``, ``Similarity``, ``NSTLoss``, ``KDSVD``, ``FSP``, ``ABLoss``)
return a list with one value per pair, the others a scalar tensor.
"""
from .ab import ABLoss
from .at import Attention
from .cc import Correlation
from .crd import AliasSampler, ContrastLoss, ContrastMemory, CRDConfig, CRDLoss
from .dkd import DKDLoss
from .fitnet import HintLoss
from .fsp import FSP
from .ft import FactorTransfer
from .kd import DistillKL, standardize_logits
from .kdsvd import KDSVD
from .modules import Connector, ConvReg, Embed, LinearEmbed, Normalize, Paraphraser, Translator
from .nst import NSTLoss
from .ofd import OFDLoss
from .pkt import PKT
from .reviewkd import ABF, ReviewKDLoss, hcl_loss
from .rkd import RKDLoss
from .semckd import MLPEmbed, Proj, SelfA, SemCKDLoss
from .sp import Similarity
from .srrl import SRRL, SRRLLoss
from .vid import VIDLoss
from .methods import Distiller, build_method, get_method, method_names, register_method  # noqa: E402

__all__ = [
    "get_method",
    "ABLoss", "Attention", "Correlation", "CRDConfig", "CRDLoss", "ContrastLoss", "ContrastMemory",
    "AliasSampler", "DKDLoss", "HintLoss", "FSP", "FactorTransfer", "DistillKL",
    "standardize_logits", "KDSVD", "NSTLoss", "PKT", "RKDLoss", "Similarity", "VIDLoss",
    "SRRL", "SRRLLoss", "SemCKDLoss", "SelfA", "Proj", "MLPEmbed",
    "ReviewKDLoss", "ABF", "hcl_loss", "OFDLoss",
    "ConvReg", "Connector", "Embed", "LinearEmbed", "Normalize", "Paraphraser", "Translator",
    "Distiller", "build_method", "method_names", "register_method",
]
