import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")  # copy of ../shared/fixtures (MIT, authors of Ego-ST)
torch.set_num_threads(min(2, torch.get_num_threads()))


def run_bounded(cmd, timeout, **kw):
    """subprocess.run(cmd, capture_output=True, text=True, timeout=...), except that on a timeout the command's whole
    process group is killed: a torchrun launcher killed alone leaves its ranks running (and holding the cores) for
    every test after it."""
    import signal
    import subprocess
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
