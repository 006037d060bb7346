"""Recipe ``mosaic-alm eval-alm``: evaluate an ALM artifact on the embedded data (closed QA, captions,
classification by generation; :func:`eval.alm_benchmark.evaluate_alm`).

    mosaic-alm eval-alm runs/alm/stage4/artifact --data data/embedded-small [--out runs/eval-alm]
        [--no-audio-artifact runs/alm/no_audio/stage3/artifact] [--retrieval-encoder runs/pretrain-tiny/encoder]

The two options add the caption baselines, scored by the same harness on the same clips.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.alm_benchmark import evaluate_alm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic-alm eval-alm", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", help="a stage artifact folder (written by mosaic-alm train-alm)")
    p.add_argument("--data", default="data/embedded-small", help="embedded data root with instructions/")
    p.add_argument("--out", default="runs/eval-alm")
    p.add_argument("--max-closed", type=int, default=200)
    p.add_argument("--max-captions", type=int, default=60)
    p.add_argument("--max-classify", type=int, default=40, help="test clips per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-audio-artifact", default=None, help="caption baseline: the no-audio variant's artifact")
    p.add_argument("--retrieval-encoder", default=None,
                   help="caption baseline: the nearest training clip's caption by this encoder's pooled feature")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    for folder in (a.artifact, a.no_audio_artifact):
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such artifact folder")
    evaluate_alm(a.artifact, a.data, a.out, a.max_closed, a.max_captions, a.max_classify, a.seed, a.batch_size,
                 no_audio_artifact=a.no_audio_artifact, retrieval_encoder=a.retrieval_encoder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
