import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")  # copy of ../shared/fixtures (MIT, authors of Ego-ST)
torch.set_num_threads(min(2, torch.get_num_threads()))
