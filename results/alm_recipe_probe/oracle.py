"""Oracle: audio slots = the answer word's own embedding (repeated); does the LLM (optionally an artifact's LoRA) copy it?"""
import os, sys, torch, json
torch.set_num_threads(1)
from collections import defaultdict
from mosaic_core.config import load_config
from mosaic_alm.artifact import build_from, load_alm
from mosaic_alm.data import load_records, PromptFormatter, collate, question_text
ROOT = os.environ.get("DATA", "data/embedded-full")  # the embedded data the pipeline built
ENC = os.environ.get("ENCODER", "runs/pipeline/pretrain-audiomosaic/encoder")  # the default run's encoder
if len(sys.argv) > 1: model = load_alm(sys.argv[1])
else: model = build_from(load_config("configs/alm/stage1.yaml", [f"audio.encoder={ENC}"]), None)
model.eval(); tok = model.tokenizer; E = model.base_llm().get_input_embeddings().weight.detach()
from eval.alm_qa import sample_per_qtype
test = [r for r in sample_per_qtype(load_records(ROOT, "test", None, "closed", 0, 0, None), 120, 0)]
fmt = PromptFormatter.for_model(model); ok = defaultdict(list)
for r in test:
    b = collate([dict(fmt.encode(question_text(r)), audio=None, index=0)], tok.pad_token_id, "left")
    emb = model.base_llm().get_input_embeddings()(b["input_ids"])
    w = E[tok(r["output"], add_special_tokens=False)["input_ids"]].mean(0)
    emb[b["audio_mask"]] = w.to(emb.dtype)
    out = model.llm.generate(inputs_embeds=emb, attention_mask=b["attention_mask"], max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    ans = tok.decode(out[0], skip_special_tokens=True).strip().lower().rstrip(".")
    ok[r["qtype"]].append(ans == r["output"].lower())
print({q: round(sum(v)/len(v), 3) for q, v in ok.items()}, "overall", round(sum(sum(v) for v in ok.values())/len(test), 3))
