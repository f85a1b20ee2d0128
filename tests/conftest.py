import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One intra-op thread: the suite is made of many tiny ops, where OpenMP threads cost more than
# they give (and oversubscribe a busy machine). Subprocess runs set their own.
torch.set_num_threads(1)




#: Files that take minutes: collected first, so that with two workers (make test) they start at
#: once instead of running alone at the end.
LONG_FILES = ("test_quickstart.py", "test_grid.py", "test_trials.py", "test_extending.py", "test_onnx.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: the order inside each group is kept
