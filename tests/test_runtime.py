"""Process-wide compute threads (mosaic_core.runtime.set_threads)."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = ("import json, sys, torch; from mosaic_core.runtime import set_threads\n"
          "if sys.argv[1] == '1': set_threads(1)\n"
          "import sklearn.linear_model, scipy.linalg  # pools loaded after the call too\n"
          "from threadpoolctl import threadpool_info\n"
          "print(json.dumps({'torch': torch.get_num_threads(),"
          " 'pools': {p['filepath'].split('/')[-1]: p['num_threads'] for p in threadpool_info()}}))")


def _threads(call: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if call else "0"], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_set_threads_caps_torch_and_every_blas_pool():
    """set_threads(1) leaves one thread in torch and in every BLAS/OpenMP pool, including those of libraries
    loaded after the call (scipy's and scikit-learn's)."""
    got = _threads(True)
    assert got["torch"] == 1 and got["pools"] and set(got["pools"].values()) == {1}, got
    if (os.cpu_count() or 1) > 1:  # the check has teeth where there is more than one core
        before = _threads(False)
        assert before["torch"] > 1 or max(before["pools"].values()) > 1, before
