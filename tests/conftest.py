import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One intra-op thread: the suite is made of many tiny ops, where OpenMP threads cost more than
# they give (and oversubscribe a busy machine). Subprocess runs set their own.
torch.set_num_threads(1)


