"""Projector alignment and the copy warm-up (mosaic_alm.align): the schedule, the slot mixing in the model, the
alignment fitting real toy audio's classes to the options' word embeddings, and a stage that runs both.

Real SmolLM2, a random tiny encoder, toy tones (mosaic_alm.toy)."""
import pytest
import torch

from mosaic_alm.toy import make_toy_data

REPO_CONFIGS = "configs/alm"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy"), per_class={"train": 6, "valid": 1, "test": 1})


@pytest.fixture(scope="module")
def built_model(toy):
    from mosaic_alm.artifact import build_from
    from mosaic_core.config import load_config

    torch.manual_seed(0)
    cfg = load_config(f"{REPO_CONFIGS}/stage1.yaml", [f"data.root={toy}", "audio.encoder=random:tiny"])
    m = build_from(cfg)
    return m, {k: v.clone() for k, v in m.projector.state_dict().items()}


@pytest.fixture
def model(built_model):
    """The module's model (built once) with its projector as built, whatever test ran before: the alignment tests
    calibrate and train the projector in place."""
    m, projector_as_built = built_model
    m.projector.load_state_dict(projector_as_built)
    return m


def test_copy_weight_falls_linearly_then_stays_zero():
    from mosaic_alm.align import copy_weight

    assert [round(copy_weight(s, 10, 0.5), 6) for s in range(7)] == [1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0]
    assert copy_weight(0, 10, 0.0) == 0.0 and copy_weight(3, 0, 0.5) == 0.0


def test_copy_slots_replace_mix_or_leave_the_projected_audio(model, toy):
    from mosaic_alm.align import AnswerSlots, word_embeddings
    from mosaic_alm.data import Collator, InstructionDataset, PromptFormatter, load_records
    from mosaic_alm.featurizer import AudioFeaturizer

    recs = load_records(toy, "train")
    rows = [i for i, r in enumerate(recs) if r["options"]][:2] + [i for i, r in enumerate(recs) if not r["options"]][:1]
    b = Collator(model.tokenizer.pad_token_id)([InstructionDataset(recs, PromptFormatter.for_model(model))[i]
                                                for i in rows])
    audio = AudioFeaturizer.for_model(model).inputs(b.pop("audios"))
    plain = model.embed(b["input_ids"], b["audio_mask"], **audio).detach()
    slots = AnswerSlots(model, recs)
    for alpha in (1.0, 0.25):
        extra = slots(rows, alpha)
        assert extra["copy_weight"].tolist() == [alpha, alpha, 0.0]  # an open answer is not copied
        mixed = model.embed(b["input_ids"], b["audio_mask"], **audio, **extra).detach()
        m = b["audio_mask"]
        assert torch.equal(mixed[~m], plain[~m])  # text untouched
        want = word_embeddings(model, [recs[rows[0]]["output"]])[0]
        got = mixed[0][m[0]]
        expect = alpha * want + (1 - alpha) * plain[0][m[0]]
        assert torch.allclose(got, expect, atol=1e-5), (alpha, (got - expect).abs().max())
        assert torch.equal(mixed[2], plain[2])
    zero = model.embed(b["input_ids"], b["audio_mask"], **audio, **slots(rows, 0.0)).detach()
    assert torch.equal(zero, plain)


def test_alignment_fits_the_options_without_touching_the_global_rng(model, toy):
    import torch.nn.functional as F

    from mosaic_alm.align import align_projector, option_targets, word_embeddings
    from mosaic_alm.data import load_records
    from mosaic_alm.featurizer import AudioFeaturizer

    recs = load_records(toy, "train", kind="closed")
    fz = AudioFeaturizer.for_model(model)
    clips = sorted({r["audio_path"] for r in recs})
    model.calibrate_projector(fz.tokens(clips))
    words, answer, mask = option_targets(recs)
    opts = F.normalize(word_embeddings(model, words), dim=-1)

    def accuracy():
        with torch.no_grad():
            z = model.projector(fz.tokens([r["audio_path"] for r in recs])).float().mean(1)
        return float(((F.normalize(z, dim=-1) @ opts.T).masked_fill(~mask, -9).argmax(-1) == answer).float().mean())

    before, rng = accuracy(), torch.get_rng_state()
    frozen = [p.requires_grad for p in model.projector.parameters()]
    out = align_projector(model, load_records(toy, "train"), fz.tokens, steps=60, batch_size=16, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [p.requires_grad for p in model.projector.parameters()] == frozen
    assert out["records"] == len(recs) == 18 and out["clips"] == 18 and out["last_loss"] < out["first_loss"]
    after = accuracy()
    assert after == 1.0 and after >= before, (before, after)  # three easy classes: all of them
    assert out["last_loss"] < 0.5 * out["first_loss"], out


def test_max_pool_alignment_points_different_slots_at_two_questions(model, toy):
    """Two questions about each clip (its class word, and a colour standing for the class): with pool=max each
    question is scored from its best slot, and both questions fit from the projector as a stage calibrates it.

    Which slot answers which question is not asserted: from a freshly calibrated projector the share of clips whose
    two questions pick different slots is 0.28-0.61 over seeds 0-2 with pool=max and 0.33-0.50 with pool=mean
    (measured), so it does not tell the two pools apart (an earlier '> 0.5' held only on a projector a previous test
    had trained)."""
    import torch.nn.functional as F

    from mosaic_alm.align import align_projector, option_targets, word_embeddings
    from mosaic_alm.data import load_records
    from mosaic_alm.featurizer import AudioFeaturizer

    recs = load_records(toy, "train", kind="closed")
    colour = dict(zip(sorted({r["output"] for r in recs}), ("red", "green", "blue")))
    both = recs + [{**r, "output": colour[r["output"]], "options": list(colour.values())} for r in recs]
    fz = AudioFeaturizer.for_model(model)
    model.calibrate_projector(fz.tokens(sorted({r["audio_path"] for r in recs})))  # as a stage does first
    words, answer, mask = option_targets(both)
    opts = F.normalize(word_embeddings(model, words), dim=-1)
    out = align_projector(model, both, fz.tokens, steps=80, batch_size=16, seed=0, pool="max")
    with torch.no_grad():
        z = F.normalize(model.projector(fz.tokens([r["audio_path"] for r in both])).float(), dim=-1)
    cos = (z @ opts.T).masked_fill(~mask[:, None, :], -9)  # [N, slots, V]
    assert float((cos.amax(1).argmax(-1) == answer).float().mean()) == 1.0, out  # both questions, best slot each
    assert out["last_loss"] < 0.1 * out["first_loss"], out
    with pytest.raises(ValueError, match="pool 'sum'"):
        align_projector(model, both, fz.tokens, steps=1, pool="sum")


def test_alignment_refuses_records_without_options(model):
    from mosaic_alm.align import align_projector

    with pytest.raises(ValueError, match="closed questions with options"):
        align_projector(model, [{"audio_path": "x.wav", "output": "a sentence", "options": []}], None, steps=1)


def test_stage_with_alignment_and_copy_warmup(toy, tmp_path):
    from mosaic_core.config import load_config
    from recipes.train_alm import train_stage

    cfg = load_config(f"{REPO_CONFIGS}/stage2.yaml", [
        f"data.root={toy}", f"output_dir={tmp_path}", "name=t", "audio.encoder=random:tiny", "train.max_steps=4",
        "train.batch_size=4", "prompt.system=''", "data.kind=all", "train.eval_batches=0", "train.init_from=null",
        "train.align_steps=30", "train.align_batch=16", "train.copy_warmup=0.5"])
    s = train_stage(cfg, quiet=True)
    assert s["steps"] == 4 and s["align"]["steps"] == 30 and s["align"]["records"] == 18
    assert s["align"]["last_loss"] < s["align"]["first_loss"]
    # the no-audio baseline trains the same stage: both are skipped
    cfg = load_config(f"{REPO_CONFIGS}/stage2.yaml", [
        f"data.root={toy}", f"output_dir={tmp_path}", "name=n", "audio.enabled=false", "trainable.projector=false",
        "train.max_steps=1", "train.batch_size=4", "train.eval_batches=0", "train.init_from=null",
        "train.align_steps=30", "train.copy_warmup=0.5"])
    assert train_stage(cfg, quiet=True)["align"] is None


def test_copy_warmup_of_one_is_refused(toy):
    from mosaic_alm.stage_config import check_stage_config
    from mosaic_core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="copy_warmup"):
        check_stage_config(load_config(f"{REPO_CONFIGS}/stage2.yaml", ["train.copy_warmup=1.0"]))


def test_stage_draws_question_types_evenly_with_balance(tmp_path):
    """A stage with data.balance=qtype trains on every type cycled to the largest one's count (here 3 captions
    against 18 sound questions: 36 records), and the alignment still sees each clip's closed question."""
    import json

    from mosaic_alm.stage_config import check_stage_config
    from mosaic_core.config import ConfigError, load_config
    from recipes.train_alm import train_stage

    root = make_toy_data(tmp_path / "toy", per_class={"train": 6, "valid": 1, "test": 1})
    path = root / "instructions" / "train.json"
    recs = json.loads(path.read_text())
    captions = [r for r in recs if r["qtype"] == "caption"][:3]
    path.write_text(json.dumps([r for r in recs if r["qtype"] != "caption"] + captions))
    common = [f"data.root={root}", f"output_dir={tmp_path}", "audio.encoder=random:tiny", "train.max_steps=2",
              "train.batch_size=4", "data.kind=all", "train.eval_batches=0", "train.init_from=null",
              "train.align_steps=3", "train.align_batch=8", "data.qtypes=null"]
    plain = train_stage(load_config(f"{REPO_CONFIGS}/stage2.yaml", [*common, "name=p"]), quiet=True)
    even = train_stage(load_config(f"{REPO_CONFIGS}/stage2.yaml", [*common, "name=b", "data.balance=qtype"]),
                       quiet=True)
    assert plain["train_records"] == 21 and even["train_records"] == 36
    assert even["align"]["clips"] == plain["align"]["clips"] == 18
    with pytest.raises(ConfigError, match="balance"):
        check_stage_config(load_config(f"{REPO_CONFIGS}/stage2.yaml", [*common, "data.balance=speaker"]))
