"""Oracle: audio slots = the answer word's own embedding (repeated); does the LLM (optionally an artifact's LoRA)
copy it? Exact-match accuracy per question type on the pipeline's 120 test questions.

    [DATA=...] [ENCODER=...] python results/alm_recipe_probe/oracle.py [ARTIFACT] [--out-dir DIR]

Without an artifact, the frozen LLM of ``configs/alm/stage1.yaml``. Writes ``DIR/oracle.json`` through
``eval.results.write_results`` when ``--out-dir`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, installed or not

CONFIG = "configs/alm/stage1.yaml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", nargs="?", default=None)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    import torch

    from eval.alm_qa import sample_per_qtype
    from eval.results import write_results
    from mosaic_alm.artifact import build_from, load_alm
    from mosaic_alm.data import PromptFormatter, collate, load_records, question_text
    from mosaic_core.config import load_config

    torch.set_num_threads(1)
    root = os.environ.get("DATA", "data/embedded-full")  # the embedded data the pipeline built
    enc = os.environ.get("ENCODER", "runs/pipeline/pretrain-audiomosaic/encoder")  # the default run's encoder
    if args.artifact:
        model = load_alm(args.artifact)
    else:
        model = build_from(load_config(CONFIG, [f"audio.encoder={enc}"]), None)
    model.eval()
    tok = model.tokenizer
    E = model.base_llm().get_input_embeddings().weight.detach()
    test = sample_per_qtype(load_records(root, "test", None, "closed", 0, 0, None), 120, 0)
    fmt = PromptFormatter.for_model(model)
    ok = defaultdict(list)
    for r in test:
        b = collate([dict(fmt.encode(question_text(r)), audio=None, index=0)], tok.pad_token_id, "left")
        emb = model.base_llm().get_input_embeddings()(b["input_ids"])
        w = E[tok(r["output"], add_special_tokens=False)["input_ids"]].mean(0)
        emb[b["audio_mask"]] = w.to(emb.dtype)
        out = model.llm.generate(inputs_embeds=emb, attention_mask=b["attention_mask"], max_new_tokens=6,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        ans = tok.decode(out[0], skip_special_tokens=True).strip().lower().rstrip(".")
        ok[r["qtype"]].append(ans == r["output"].lower())
    per_qtype = {q: round(sum(v) / len(v), 3) for q, v in ok.items()}
    overall = round(sum(sum(v) for v in ok.values()) / len(test), 3)
    print(per_qtype, "overall", overall)
    if args.out_dir:
        config = {"artifact": args.artifact, "config_file": None if args.artifact else CONFIG, "data": root,
                  "encoder": None if args.artifact else enc}
        write_results(args.out_dir, "oracle", {"per_qtype": per_qtype, "overall": overall}, config, seed=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
