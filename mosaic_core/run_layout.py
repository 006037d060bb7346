"""The layout of a pipeline run folder, in one place: where each job of ``mosaic-alm pipeline`` writes, and where
the report (:mod:`eval.run_report`) reads.

    {out}/pretrain-audiomosaic/   contrastive pretraining (history.json, config.yaml, encoder/)
    {out}/pretrain-mae/           the MAE baseline, same layout
    {out}/eval-encoder/           encoder_eval.json (+ its report and confusion matrices)
    {out}/alm/{variant}/stage{N}/artifact   each ALM variant's stages; {out}/alm/{variant}.log
    {out}/alm_qa_{variant}.json   each variant's alm-experiment result; {out}/alm_qa.json all of them combined
    {out}/eval-alm/alm_eval.json  the pretrained variant's ALM evaluation
    {out}/pipeline.json           stage times, status and the checked pipeline config
    {out}/report.html             the report
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PRETRAIN_RUNS = ("audiomosaic", "mae")  # pretrain-{name}/: the contrastive run and the MAE baseline


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder ``root``."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def pretrain(self, name: str) -> Path:
        return self.root / f"pretrain-{name}"

    def encoder(self, name: str) -> Path:
        return self.pretrain(name) / "encoder"

    @property
    def eval_encoder(self) -> Path:
        return self.root / "eval-encoder"

    @property
    def encoder_eval_json(self) -> Path:
        return self.eval_encoder / "encoder_eval.json"

    @property
    def alm(self) -> Path:
        return self.root / "alm"

    def alm_log(self, variant: str) -> Path:
        return self.alm / f"{variant}.log"

    def alm_qa_variant(self, variant: str) -> Path:
        return self.root / f"alm_qa_{variant}.json"

    @property
    def alm_qa(self) -> Path:
        return self.root / "alm_qa.json"

    @property
    def eval_alm(self) -> Path:
        return self.root / "eval-alm"

    @property
    def alm_eval_json(self) -> Path:
        return self.eval_alm / "alm_eval.json"

    @property
    def pipeline_json(self) -> Path:
        return self.root / "pipeline.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


# the files of a run folder that record its provenance (write_results: "git", "machine"; alm-experiment: "versions"),
# relative to the folder
RECORD_FILES = ("pipeline.json", "eval-encoder/encoder_eval.json", "eval-alm/alm_eval.json", "alm_qa.json")
# the pipeline's MAE baseline trains in its own process beside the contrastive pretraining (``seconds_alongside``)
ALONGSIDE = {"pretrain_mae": "pretrain_audiomosaic"}


def final_artifact(result_json: Path) -> Path | None:
    """The artifact of the last stage a variant trained, as its ``alm-experiment`` result names it (a folder glob
    would also find the stage-4 artifact of an earlier run with another budget)."""
    result_json = Path(result_json)
    if not result_json.is_file():
        return None
    variants = json.loads(result_json.read_text()).get("variants", {})
    if not variants:
        return None
    variant, res = next(iter(variants.items()))
    stages = res.get("stages") or []
    # {out}/alm_qa_{variant}.json names {out}/alm/{variant}/stage{N}/artifact (resolved here, whatever the cwd)
    return RunLayout(result_json.parent).alm / variant / f"stage{stages[-1]['stage']}" / "artifact" if stages else None
