"""st-r1: a small, readable PyTorch implementation of ST-R1 and Ego-ST Bench (arXiv 2503.12542)."""
