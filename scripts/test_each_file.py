"""Run every tests/test_*.py file alone, each in its own pytest process, and print a table (file, result, seconds).

A test that passes only after another one has run (a file it reads that some other test writes, a setting another
test leaves behind) fails here: each file starts from a fresh copy of the freshly built embedded data (what the
``embedded_root`` fixture builds on a fresh clone, and nothing derived from it: no instruction files, no mixtures)
and an empty token cache, in the file order of the default run (``-p no:randomly``).

    .venv/bin/python scripts/test_each_file.py                         # every file
    .venv/bin/python scripts/test_each_file.py tests/test_alm_shards.py tests/test_demo.py
    .venv/bin/python scripts/test_each_file.py -- --run-slow           # arguments after -- go to each pytest
    .venv/bin/python scripts/test_each_file.py --shared-data           # the usual data folder, no fresh copies

Exit code 0 when every file passes, 1 when any fails (pytest's own exit code per file is in the table; 5, no test
collected, is a failure as in scripts/test.sh). Each file's output is kept in the log folder it prints.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


def _summary(log: Path) -> str:
    """pytest's closing counts ('5 passed, 2 skipped'), from the last line that has them."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if re.search(r"\d+ (passed|failed|error|errors|skipped|deselected|no tests ran)", line):
            return re.sub(r"^=+ | =+$", "", line.strip())
    return "(no summary line)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="test files (default: every tests/test_*.py)")
    p.add_argument("--shared-data", action="store_true",
                   help="use the usual data folder ($MOSAIC_ALM_DATA or data/embedded-small) and token cache")
    p.add_argument("--logs", default=None, help="folder for each file's output (default: a new temporary folder)")
    args = p.parse_args(argv)

    files = [Path(f) for f in args.files] or sorted((REPO / "tests").glob("test_*.py"))
    logs = Path(args.logs or tempfile.mkdtemp(prefix="mosaic-each-file-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = None
    if not args.shared_data:
        work = Path(tempfile.mkdtemp(prefix="mosaic-each-file-"))
        t0 = time.time()
        print(f"[each-file] building the embedded data once into {work / 'pristine'} (copied fresh for each file)",
              flush=True)
        subprocess.run([PYTHON, "-c", "import sys; from encoder.data.embedded import build; "
                        "build(sys.argv[1], profile='small', seed=0)", str(work / "pristine")],
                       cwd=REPO, env=env, check=True)
        print(f"[each-file] data built in {time.time() - t0:.0f} s; logs in {logs}", flush=True)
    else:
        print(f"[each-file] logs in {logs}", flush=True)

    rows = []
    for f in files:
        name = f.name
        run_env = dict(env)
        if work is not None:
            data, tokens = work / "data", work / "token-cache"
            for d in (data, tokens):
                shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(work / "pristine", data)
            tokens.mkdir()
            run_env.update(MOSAIC_ALM_DATA=str(data), MOSAIC_ALM_TOKEN_CACHE=str(tokens))
        log = logs / f"{f.stem}.log"
        t0 = time.time()
        with open(log, "w") as out:
            cmd = [PYTHON, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", str(f), *extra]
            rc = subprocess.run(cmd, cwd=REPO, env=run_env, stdout=out, stderr=subprocess.STDOUT).returncode
        secs = time.time() - t0
        rows.append((name, rc, secs, _summary(log)))
        print(f"[each-file] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.0f} s", flush=True)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'file':<{width}}  result  exit  seconds  pytest")
    for name, rc, secs, summary in rows:
        print(f"{name:<{width}}  {'pass' if rc == 0 else 'FAIL':<6}  {rc:>4}  {secs:>7.1f}  {summary}")
    failed = [r[0] for r in rows if r[1] != 0]
    total = sum(r[2] for r in rows)
    print(f"\n{len(rows) - len(failed)} of {len(rows)} files passed alone in {total / 60:.1f} min"
          + (f"; failed: {', '.join(failed)} (logs in {logs})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
