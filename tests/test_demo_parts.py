"""The demo's pieces: data, pixel VAE, text path, training lowers the loss, export and reload."""

from pathlib import Path

import pytest
import torch

from flowblending_accel.demo.data import (
    CANVAS,
    FRAMES,
    all_prompts,
    load_bitmaps,
    parse_prompt,
    reference_clips,
    sample_batch,
)
from flowblending_accel.demo.models import build_vae, encode_prompts
from flowblending_accel.demo.text import MAX_SEQUENCE_LENGTH, build_text_encoder, build_tokenizer


def test_dataset_is_deterministic_per_seed_and_shaped():
    bitmaps = load_bitmaps("train")
    a = sample_batch(bitmaps, 6, torch.Generator().manual_seed(3))
    b = sample_batch(bitmaps, 6, torch.Generator().manual_seed(3))
    assert torch.equal(a.clips, b.clips) and a.prompts == b.prompts
    assert a.clips.shape == (6, 1, FRAMES, CANVAS, CANVAS)
    assert a.clips.min() >= -1 and a.clips.max() <= 1
    assert len(load_bitmaps("train").labels) + len(load_bitmaps("test").labels) == len(
        load_bitmaps("all").labels
    )


def test_motion_is_as_prompted():
    clips = reference_clips(["a 1 moving right", "a 1 moving up"], seed=0).clips

    def centre(frame):
        weights = (frame + 1).clamp_min(0)
        ys, xs = torch.meshgrid(torch.arange(CANVAS), torch.arange(CANVAS), indexing="ij")
        return (weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()

    (x0, _), (x1, _) = centre(clips[0, 0, 0]), centre(clips[0, 0, -1])
    (_, y0), (_, y1) = centre(clips[1, 0, 0]), centre(clips[1, 0, -1])
    assert x1 - x0 == pytest.approx(16, abs=0.5) and y0 - y1 == pytest.approx(16, abs=0.5)


def test_prompt_language():
    assert parse_prompt("A 7 moving LEFT") == (7, "left")
    assert len(all_prompts()) == 40
    with pytest.raises(ValueError, match="demo's language"):
        parse_prompt("a cat moving left")


def test_pixel_vae_is_lossless():
    clips = sample_batch(load_bitmaps(), 3, torch.Generator().manual_seed(0)).clips
    vae = build_vae()
    latents = vae.encode(clips).latent_dist.mode()
    assert latents.shape == (3, 32, 5, 8, 8)
    assert torch.allclose(vae.decode(latents).sample, clips, atol=1e-6)
    with pytest.raises(ValueError, match="pixel shuffle"):
        vae.encode(clips[:, :, :8])


def test_text_path_matches_the_pipeline_convention():
    tokenizer, encoder = build_tokenizer(), build_text_encoder()
    tokens = tokenizer(["a 7 moving left", ""], padding="max_length", max_length=MAX_SEQUENCE_LENGTH)
    assert tokens.input_ids[0][:5] == [3, 13, 5, 16, 1] and tokens.input_ids[1][0] == 1
    embeds = encode_prompts(tokenizer, encoder, ["a 7 moving left", "a 3 moving up"])
    assert embeds.shape == (2, MAX_SEQUENCE_LENGTH, 64)
    assert torch.all(embeds[:, 5:] == 0)  # padding zeroed, as WanPipeline does


@pytest.fixture(scope="module")
def short_training(tmp_path_factory):
    from flowblending_accel.demo.train import TrainConfig, train_pair

    folder = tmp_path_factory.mktemp("train")
    config = TrainConfig(
        steps=12, batch_size=8, lr=2e-3, warmup_steps=1, eval_every=12, checkpoint_every=6, threads=1
    )
    trainer = train_pair(config, folder, progress=False)
    return trainer, config, folder


def test_a_few_training_steps_lower_the_loss(short_training):
    from flowblending_accel.demo.train import Trainer

    trainer, config, folder = short_training
    fresh = Trainer(config, Path(folder) / "fresh")
    before, after = fresh.validation_loss(False), trainer.validation_loss(False)
    assert after["large"] < before["large"] and after["small"] < before["small"]
    assert trainer.log[-1]["step"] == 12 and (folder / "checkpoint.pt").exists()


def test_training_resumes_exactly(short_training, tmp_path):
    from flowblending_accel.demo.train import train_pair

    trainer, config, _ = short_training
    train_pair(config, tmp_path, progress=False, until=6)  # first sitting stops half way
    resumed = train_pair(config, tmp_path, progress=False)
    for name, module in resumed.modules().items():
        for key, value in module.state_dict().items():
            assert torch.allclose(value, trainer.modules()[name].state_dict()[key], atol=1e-6), (name, key)


def test_export_and_reload(short_training, tmp_path):
    from flowblending_accel.demo.export import export_pair
    from flowblending_accel.demo.models import CALL_DEFAULTS, load_demo_pipeline

    _, _, folder = short_training
    export_pair(folder / "checkpoint.pt", tmp_path / "pair")
    pipe, small = load_demo_pipeline(tmp_path / "pair")
    assert type(pipe.vae).__name__ == "PixelShuffleVAE" and small.config.num_layers == 3
    frames = pipe(
        "a 2 moving up",
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **CALL_DEFAULTS,
    ).frames
    assert frames.shape == (1, FRAMES, CANVAS, CANVAS, 1)


def test_the_export_command_writes_a_card_with_the_recipe_ablations_and_notes(short_training, tmp_path):
    from flowblending_accel.cli import main

    _, _, folder = short_training
    ablations = tmp_path / "ablations.md"
    ablations.write_text("# Embedded pair: ablations\n\n| variant | step |\n|---|---|\n| wide | 400 |\n")
    argv = ["export-demo", str(folder / "checkpoint.pt"), str(tmp_path / "pair")]
    notes = tmp_path / "reading.md"
    notes.write_text("## Reading\n\nThe prompt decides the digit.\n")
    assert main([*argv, "--card-ablations", str(ablations), "--card-notes", str(notes)]) == 0
    card = (tmp_path / "pair" / "README.md").read_text()
    assert "## Recipe ablations: what decides digit identity\n\n| variant | step |" in card
    assert "| wide | 400 |" in card and "# Embedded pair: ablations" not in card
    assert card.endswith("| wide | 400 |\n\n## Reading\n\nThe prompt decides the digit.\n")
    assert "crosses the canvas along its centre line" in card


def test_train_demo_takes_the_large_models_size_and_learning_rate(tmp_path):
    from flowblending_accel.cli import main

    argv = ["train-demo", "--output", str(tmp_path), "--steps", "1", "--lr", "0.001"]
    argv += ["--placement", "anywhere"]
    assert main([*argv, "--large-size", "num_layers=2", "ffn_dim=64"]) == 0
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["config"]["lr"] == 0.001 and state["config"]["placement"] == "anywhere"
    assert state["config"]["large_overrides"] == {"num_layers": 2, "ffn_dim": 64}


def test_generated_clips_cross_the_centre_and_anywhere_moves_only_the_path():
    from flowblending_accel.demo.data import DIGIT_SIZE

    bitmaps = load_bitmaps("train")
    centre = sample_batch(bitmaps, 8, torch.Generator().manual_seed(4))
    anywhere = sample_batch(bitmaps, 8, torch.Generator().manual_seed(4), placement="anywhere")
    assert centre.prompts == anywhere.prompts  # same draws, only the path moves
    ink = (centre.clips[:, 0, 0] > -1).float()  # first frame, (B, H, W)
    rows, cols = ink.amax(2), ink.amax(1)
    middle = (CANVAS - DIGIT_SIZE) // 2
    for b, direction in enumerate(centre.directions.tolist()):
        across = rows[b] if direction < 2 else cols[b]  # left/right move along x, so rows lie across
        assert across[:middle].sum() == 0 and across[middle + DIGIT_SIZE :].sum() == 0
    assert not torch.equal(centre.clips, anywhere.clips)
    with pytest.raises(ValueError, match="placement='middle' must be one of"):
        sample_batch(bitmaps, 2, torch.Generator(), placement="middle")


def test_training_starts_from_an_exported_pair(short_training, tmp_path):
    from flowblending_accel.demo.export import export_pair
    from flowblending_accel.demo.train import TrainConfig, Trainer

    _, config, folder = short_training
    pair = export_pair(folder / "checkpoint.pt", tmp_path / "pair")
    started = Trainer(TrainConfig(init_from=str(pair), threads=1), tmp_path / "fine-tune")
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    for name, module in started.modules().items():
        for key, value in module.state_dict().items():
            # the exported weights are the EMA copies (float tensors), buffers the model's own
            expected = state["ema"][name].get(key, state["models"][name][key])
            assert torch.equal(value, expected), (name, key)
            if key in started.ema[name].shadow:
                assert torch.equal(started.ema[name].shadow[key], expected)
    (tmp_path / "no-small").mkdir()
    (tmp_path / "no-small" / "transformer").symlink_to(pair / "transformer")
    unreadable = "cannot read its transformer_small .*written by `flowblending-accel"
    with pytest.raises(ValueError, match=unreadable):
        Trainer(TrainConfig(init_from=str(tmp_path / "no-small")), tmp_path / "missing")
    mismatch = r"its large does not fit this recipe \(size mismatch .*\(--large-size\)"
    with pytest.raises(ValueError, match=mismatch):
        Trainer(TrainConfig(init_from=str(pair), large_overrides={"ffn_dim": 64}), tmp_path / "other")


def test_a_fine_tuned_pairs_card_names_where_it_started():
    from flowblending_accel.demo.card import model_card

    config = {"init_from": "runs/demo-pair-v1", "placement": "centre"}
    card = model_card([], config, None, None, {"train": ["first", "second"]})
    assert "- started from the pair in `runs/demo-pair-v1`" in card
    assert "- commands, in order: `first`; then `second`" in card
    assert "started from" not in model_card([], {}, None, None, {})


def test_train_demo_offers_exactly_the_datas_placements():
    from flowblending_accel.cli import build_parser
    from flowblending_accel.demo.data import PLACEMENTS

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    placement = next(a for a in commands.choices["train-demo"]._actions if a.dest == "placement")
    assert tuple(placement.choices) == PLACEMENTS  # the CLI spells them out so --help needs no torch


def test_a_resumed_sitting_keeps_its_weights_its_start_and_its_placement(short_training, tmp_path):
    from flowblending_accel.demo.export import export_pair
    from flowblending_accel.demo.train import TrainConfig, Trainer, train_pair

    _, config, folder = short_training
    pair = export_pair(folder / "checkpoint.pt", tmp_path / "pair")
    recipe = dict(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=1, threads=1)
    first = train_pair(TrainConfig(init_from=str(pair), **recipe), tmp_path / "run", progress=False)
    pair_moved = pair.rename(tmp_path / "moved")  # a resume must not read the pair again
    resumed = Trainer(TrainConfig(init_from=str(pair), **recipe), tmp_path / "run")
    assert resumed.load() and resumed.step == 2 and resumed.config.init_from == str(pair)
    for key, value in first.large.state_dict().items():
        assert torch.equal(resumed.large.state_dict()[key], value), key
    without = Trainer(TrainConfig(**recipe), tmp_path / "run")
    assert without.load() and without.config.init_from == str(pair)  # the card still names the start
    with pytest.raises(ValueError, match="trained with placement centre; pass --placement centre"):
        Trainer(TrainConfig(placement="anywhere", **recipe), tmp_path / "run").load()
    assert pair_moved.exists()


def test_the_classifier_sees_digits_anywhere_and_the_report_compares_centred_clips(monkeypatch):
    from flowblending_accel.demo import classifier as classifier_module
    from flowblending_accel.demo.data import DIGIT_SIZE

    seen = []
    real_sample = classifier_module.sample_batch

    def recording(*args, **kwargs):
        seen.append(kwargs.get("placement", args[3] if len(args) > 3 else "centre"))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "sample_batch", recording)
    model, _ = classifier_module.train_classifier(seed=0, steps=1, batch_size=4)
    classifier_module.evaluate_classifier(model, clips=4)
    assert seen == ["anywhere"] * 3  # one training batch, the report's evaluation, ours
    clips = reference_clips(["a 4 moving right", "a 4 moving down"], seed=3).clips
    ink = clips[:, 0, 0] > -1  # first frame
    middle = (CANVAS - DIGIT_SIZE) // 2
    assert not ink[0, :middle].any() and not ink[0, middle + DIGIT_SIZE :].any()  # rows across "right"
    # columns lie across "down"
    assert not ink[1, :, :middle].any() and not ink[1, :, middle + DIGIT_SIZE :].any()
