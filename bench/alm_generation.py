"""Generated tokens per second: batched left-padded greedy generation vs one request at a time.

    python bench/alm_generation.py --artifact runs/alm-exp/pretrained/stage4/artifact --n 16 --batch-size 8
    python bench/alm_generation.py --n 8            # no artifact: a fresh ALM (SmolLM2 + random tiny encoder)

Requests are (clip, question) pairs from the embedded data's test split (or toy clips). Encoder features are cached
before timing (both paths would hit the cache the same way), so the figure is the LLM's. Generated tokens are counted
with min_new_tokens = max_new_tokens, so every row generates exactly that many in both paths. Also
checks that both paths give the same answers. Prints one JSON line; ``--out`` writes it too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def run(model, audios, questions, batch_size: int, max_new_tokens: int) -> dict:
    from mosaic_alm.data import PromptFormatter, collate
    from mosaic_alm.featurizer import AudioFeaturizer

    fmt = PromptFormatter.for_model(model)
    feats = AudioFeaturizer.for_model(model)
    items = [dict(fmt.encode(q), audio=a, index=i) for i, (a, q) in enumerate(zip(audios, questions))]
    pad = model.tokenizer.pad_token_id
    if feats is not None:
        feats.tokens(list(audios))  # warm the per-clip feature cache

    def gen(chunk):
        b = collate(chunk, pad, "left")
        audio = feats.inputs(b["audios"]) if feats is not None else {}
        return model.generate(b["input_ids"], b["attention_mask"], b["audio_mask"], max_new_tokens=max_new_tokens,
                              min_new_tokens=max_new_tokens, **audio)

    gen(items[:1])  # warm-up
    res = {}
    for name, bs in (("batched", batch_size), ("single", 1)):
        t0 = time.perf_counter()
        outs = []
        for s in range(0, len(items), bs):
            outs += list(gen(items[s:s + bs]))
        dt = time.perf_counter() - t0
        toks = sum(int(o.numel()) for o in outs)
        res[name] = {"seconds": round(dt, 2), "tokens": toks, "tokens_per_s": round(toks / dt, 2),
                     "texts": [model.tokenizer.decode(o, skip_special_tokens=True) for o in outs]}
    res["same_answers"] = res["batched"]["texts"] == res["single"]["texts"]
    res["speedup"] = round(res["batched"]["tokens_per_s"] / res["single"]["tokens_per_s"], 2)
    for k in ("batched", "single"):
        del res[k]["texts"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--data", default="data/embedded-small")
    ap.add_argument("--n", type=int, default=16, help="requests")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16, help="every request generates exactly this many")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    from mosaic_alm.artifact import load_alm
    from mosaic_alm.audio_lm import ALMConfig, AudioLanguageModel
    from mosaic_alm.data import load_records, question_text

    if args.artifact:
        model = load_alm(args.artifact)
    else:
        cfg = ALMConfig()
        cfg.prompt.system = ""
        model = AudioLanguageModel.build(cfg).eval()
    try:
        recs = load_records(args.data, "test", kind="closed")
    except FileNotFoundError:
        from mosaic_alm.toy import make_toy_data

        recs = load_records(make_toy_data("/tmp/mosaic-alm-bench-toy"), "test", kind="closed")
    step = max(1, len(recs) // args.n)
    recs = recs[::step][:args.n]
    res = run(model, [r["audio_path"] for r in recs], [question_text(r) for r in recs], args.batch_size,
              args.max_new_tokens)
    res.update(n=len(recs), batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
               artifact=args.artifact, threads=torch.get_num_threads(), torch=torch.__version__)
    line = json.dumps(res)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
