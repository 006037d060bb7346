"""The ALM module with the real SmolLM2 and a random tiny encoder: trainable-parameter config, splicing, batched
left-padded generation, artifact round trip, ask/caption CLIs."""
import json

import pytest
import torch

from mosaic_alm.audio_lm import ALMConfig, AudioLanguageModel
from mosaic_alm.data import PromptFormatter, collate
from mosaic_alm.featurizer import AudioFeaturizer
from mosaic_alm.toy import make_toy_data
from mosaic_core.config import ConfigError

# exact equalities of the model's paths (cache vs full forward, batch vs single) hold in fp32; bf16 autocast (the
# default where the CPU has it) is checked against fp32 in test_bf16_inference_tracks_fp32
pytestmark = pytest.mark.usefixtures("fp32_everywhere")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("toy"), per_class={"train": 2, "test": 1})


@pytest.fixture(scope="module")
def alm():
    torch.manual_seed(0)
    cfg = ALMConfig()
    cfg.lora.enabled = True
    cfg.prompt.system = ""
    m = AudioLanguageModel.build(cfg)
    # give LoRA B non-zero values so the adapter actually changes outputs in the round-trip test
    with torch.no_grad():
        for n, p in m.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    return m.eval()


def test_trainable_config_counts(alm):
    alm.cfg.trainable.projector, alm.cfg.trainable.lora, alm.cfg.trainable.encoder = True, False, False
    c = alm.apply_trainable(verbose=False)
    assert c["projector"]["trainable"] == c["projector"]["total"] == 192 * 2 + 192 * 576 + 576
    assert c["lora"]["trainable"] == 0 and c["encoder"]["trainable"] == 0 and c["llm"]["trainable"] == 0
    alm.cfg.trainable.lora = True
    c = alm.apply_trainable(verbose=False)
    assert c["lora"]["trainable"] == 30 * 8 * (576 + 576) + 30 * 8 * (576 + 192)  # q: 576->576, v: 576->192
    alm.cfg.trainable.projector = alm.cfg.trainable.lora = False
    with pytest.raises(ConfigError, match="nothing to train"):
        alm.apply_trainable(verbose=False)
    alm.cfg.trainable.projector = True
    alm.apply_trainable(verbose=False)
    for p in alm.parameters():
        p.requires_grad_(False)


def test_audio_embeddings_are_spliced_at_the_slots(alm, toy):
    fmt = PromptFormatter.for_model(alm)
    clip = str(toy / "clips" / "train_beep_0.wav")
    b = collate([dict(fmt.encode("Which sound?"), audio=clip, index=0)], alm.tokenizer.pad_token_id, "left")
    with torch.no_grad():
        feats = AudioFeaturizer.for_model(alm)
        emb = alm.embed(b["input_ids"], b["audio_mask"], **feats.inputs(b["audios"]))
        words = alm.base_llm().get_input_embeddings()(b["input_ids"])
        proj = alm.projector(feats.tokens([clip]))
    m = b["audio_mask"][0]
    assert alm.n_audio_tokens == 8 and int(m.sum()) == 8
    torch.testing.assert_close(emb[0, m], proj[0])
    torch.testing.assert_close(emb[0, ~m], words[0, ~m])


def test_feature_cache_per_clip(alm, toy, tmp_path):
    clip = str(toy / "clips" / "train_hum_0.wav")
    feats = AudioFeaturizer(alm.encoder, alm.cfg.audio.target_frames, cache_dir=tmp_path)
    a = feats.tokens([clip])
    b = feats.tokens([clip, clip])
    assert feats.hits == 2 and feats.encoded == 1
    assert torch.equal(a[0], b[1])


def test_model_takes_tensors_only(alm, toy):
    """Audio reaches the model as tensors (featurizer output); a batch without them is refused with one line."""
    fmt = PromptFormatter.for_model(alm)
    clip = str(toy / "clips" / "train_hum_0.wav")
    b = collate([dict(fmt.encode("Which sound?"), audio=clip, index=0)], alm.tokenizer.pad_token_id, "left")
    with pytest.raises(ValueError, match="audio_tokens or spectrograms"):
        alm.embed(b["input_ids"], b["audio_mask"])
    spec = AudioFeaturizer.for_model(alm).spectrograms([clip])
    with torch.no_grad():  # spectrograms through the encoder inside the model == cached frozen tokens
        feats = AudioFeaturizer.for_model(alm)
        e1 = alm.embed(b["input_ids"], b["audio_mask"], spectrograms=spec)
        e2 = alm.embed(b["input_ids"], b["audio_mask"], audio_tokens=feats.tokens([clip]))
    torch.testing.assert_close(e1, e2)


def test_batched_left_padded_generation_equals_single(alm, toy):
    from mosaic_alm.generation import generate_answers

    clips = [str(toy / "clips" / f"train_{c}_0.wav") for c in ("beep", "hum", "noise")]
    qs = ["Which sound is heard?", "Describe this audio in a few words, please, with care.", "Loud?"]
    batched = generate_answers(alm, clips, qs, batch_size=3, max_new_tokens=6, sort_by_length=False)
    single = [generate_answers(alm, [c], [q], batch_size=1, max_new_tokens=6)[0] for c, q in zip(clips, qs)]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)


def test_artifact_round_trip_bit_exact(alm, toy, tmp_path):
    import dataclasses

    from mosaic_alm.artifact import load_alm, save_artifact

    cfg = {k: dataclasses.asdict(getattr(alm.cfg, k)) for k in ("llm", "lora", "audio", "projector", "trainable",
                                                              "prompt")}
    clips = sorted(str(p) for p in (toy / "clips").glob("*.wav"))[:4]
    assert alm.calibrate_projector(AudioFeaturizer.for_model(alm).tokens(clips)) == 4
    assert int(alm.projector.stats_count) == 4
    assert not torch.equal(alm.projector.feat_std, torch.ones_like(alm.projector.feat_std))  # measured, then saved
    art = save_artifact(alm, tmp_path / "artifact", cfg, meta={"stage": 0})
    assert (art / "projector.safetensors").is_file() and (art / "adapter" / "adapter_model.safetensors").is_file()
    assert (art / "encoder" / "model.safetensors").is_file() and json.loads((art / "meta.json").read_text())
    again = load_alm(art)
    for (n1, p1), (n2, p2) in zip(alm.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    fmt = PromptFormatter.for_model(alm)
    clip = str(toy / "clips" / "test_noise_0.wav")
    b = collate([dict(fmt.encode("Which sound?", "noise"), audio=clip, index=0)], alm.tokenizer.pad_token_id, "right")
    audio = b.pop("audios")
    with torch.no_grad():
        assert torch.equal(alm(**b, **AudioFeaturizer.for_model(alm).inputs(audio)).logits,
                           again(**b, **AudioFeaturizer.for_model(again).inputs(audio)).logits)


def test_no_audio_model_has_no_slots():
    from mosaic_alm.llm import LLMConfig, load_llm

    cfg = ALMConfig()
    cfg.audio.enabled = False
    cfg.lora.enabled = False
    m = AudioLanguageModel(cfg, *load_llm(LLMConfig()))
    assert m.encoder is None and m.projector is None and m.n_audio_tokens == 0
    e = PromptFormatter.for_model(m).encode("Which word?", "yes")
    assert sum(e["audio_mask"]) == 0
    cfg.trainable.projector = True
    with pytest.raises(ConfigError, match="audio.enabled is false"):
        m.apply_trainable(verbose=False)


def test_answer_only_loss_equals_full_logits_loss(alm, toy):
    fmt = PromptFormatter.for_model(alm)
    clips = [str(toy / "clips" / f"train_{c}_1.wav") for c in ("beep", "noise")]
    b = collate([dict(fmt.encode(q, a), audio=c, index=i) for i, (q, a, c) in
                 enumerate(zip(["Which sound?", "Which sound is it, please?"], ["beep", "white noise"], clips))],
                alm.tokenizer.pad_token_id, "right")
    audio = AudioFeaturizer.for_model(alm).inputs(b.pop("audios"))
    with torch.no_grad():
        ours = alm(**b, **audio).loss
        emb = alm.embed(b["input_ids"], b["audio_mask"], **audio)
        ref = alm.llm(inputs_embeds=emb, attention_mask=b["attention_mask"], labels=b["labels"]).loss
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_option_loglik_with_shared_prompt_cache_matches_full_forward(alm, toy):
    from mosaic_alm.data import IGNORE
    from mosaic_alm.generation import option_loglik

    clip = str(toy / "clips" / "train_hum_1.wav")
    q, opts = "Which sound? Answer with one of: beep, hum, white noise.", ["beep", "hum", "white noise"]
    best, scores = option_loglik(alm, [clip], [q], [opts], return_scores=True)
    fmt = PromptFormatter.for_model(alm)
    b = collate([dict(fmt.encode(q, o), audio=clip, index=i) for i, o in enumerate(opts)],
                alm.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        emb = alm.embed(b["input_ids"], b["audio_mask"], **AudioFeaturizer.for_model(alm).inputs(b["audios"]))
        lp = torch.log_softmax(alm.llm(inputs_embeds=emb, attention_mask=b["attention_mask"]).logits[:, :-1], -1)
    t = b["labels"][:, 1:]
    ref = (lp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (t != IGNORE)).sum(1)
    torch.testing.assert_close(torch.tensor(scores[0]), ref, rtol=1e-4, atol=1e-4)
    assert best[0] == int(ref.argmax())


def test_bf16_inference_tracks_fp32(alm, toy, monkeypatch):
    """Where the CPU computes bf16 natively, inference autocasts to bf16 by default: option log-likelihoods stay
    within a few percent of fp32's and greedy answers start the same."""
    from mosaic_alm.generation import generate_answers, option_loglik
    from mosaic_core.runtime import cpu_bf16_isa

    if cpu_bf16_isa() is None:
        pytest.skip("no native bf16 on this CPU: auto stays fp32")
    clips = [str(toy / "clips" / f"train_{c}_0.wav") for c in ("beep", "hum")]
    qs, opts = ["Which sound is heard?"] * 2, [["beep", "hum", "noise"]] * 2
    runs = {}
    for prec in ("fp32", "auto"):
        monkeypatch.setenv("MOSAIC_ALM_PRECISION", prec)
        runs[prec] = (option_loglik(alm, clips, qs, opts, return_scores=True)[1],
                      generate_answers(alm, clips, qs, max_new_tokens=3))
    a, b = torch.tensor(runs["fp32"][0]), torch.tensor(runs["auto"][0])
    assert not torch.equal(a, b)  # auto really ran in bf16
    torch.testing.assert_close(b, a, rtol=0.05, atol=0.5)
    assert [x.split()[:1] for x in runs["auto"][1]] == [x.split()[:1] for x in runs["fp32"][1]]
