"""VQAModel: forward and backward, padding, backends, save and load, freezing, loss."""

import json

import pytest
import torch

from vqa.config import FusionConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from vqa.data import AnswerVocab
from vqa.model import VQAModel

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
ANSWERS = ["yes", "no", "red", "blue", "circle"]
QUESTIONS = ["is there a red circle?", "what color is the shape?", "is the shape blue?"]


def tiny_config(attention="dba", image="test_efficientnet", img_size=64, **text_kwargs) -> ModelConfig:
    options = {"dba": {"num_latents": 4, "reduced_dim": 8}, "full": {}, "linformer": {"proj_len": 4}}[attention]
    return ModelConfig(
        image=ImageEncoderConfig(name=image, img_size=img_size, feature_stage=-1),
        text=TextEncoderConfig(pretrained=False, max_length=16, config_overrides=dict(TINY_BERT), **text_kwargs),
        fusion=FusionConfig(attention=attention, dim=32, num_heads=2, depth=2, dropout=0.0, attention_options=options),
    )


def tiny_model(attention="dba", **kwargs) -> VQAModel:
    torch.manual_seed(0)
    return VQAModel(tiny_config(attention, **kwargs), AnswerVocab(ANSWERS))


def batch_for(model: VQAModel, questions=QUESTIONS, num_images=2):
    tokens = model.text_encoder.tokenize(questions)
    size = model.config.image.img_size
    torch.manual_seed(1)
    return {
        "pixel_values": torch.randn(num_images, 3, size, size),
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "image_index": torch.arange(len(questions)) % num_images,
    }


@pytest.mark.parametrize("image", ["test_efficientnet", "test_vit"])
def test_forward_backward_reaches_every_part(image):
    model = tiny_model(image=image)
    model.train()
    logits = model(**batch_for(model))
    assert logits.shape == (3, len(ANSWERS))
    targets = torch.zeros(3, len(ANSWERS))
    targets[:, 0] = 1.0
    model.compute_loss(logits, targets).backward()
    for part in (model.image_encoder.backbone, model.text_encoder.backbone, model.fusion, model.head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("attention", ["dba", "full", "linformer"])
def test_backends_share_interface(attention):
    model = tiny_model(attention).eval()
    logits = model(**batch_for(model))
    assert logits.shape == (3, len(ANSWERS))
    assert torch.isfinite(logits).all()
    has_latents = model.fusion.text_latent is not None
    assert has_latents == (attention == "dba")


@pytest.mark.parametrize("attention", ["dba", "full", "linformer"])
def test_question_padding_leaves_logits_unchanged(attention):
    model = tiny_model(attention).eval()
    batch = batch_for(model, QUESTIONS[:1], num_images=1)
    with torch.no_grad():
        reference = model(**batch)
        pad_id = model.text_encoder.tokenizer.pad_token_id
        padded_ids = torch.cat([batch["input_ids"], torch.full((1, 5), pad_id)], dim=1)
        padded_mask = torch.cat([batch["attention_mask"], torch.zeros(1, 5, dtype=torch.long)], dim=1)
        padded = model(batch["pixel_values"], padded_ids, padded_mask, batch["image_index"])
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=0)


def test_single_question_matches_batch_row():
    model = tiny_model().eval()
    batch = batch_for(model)
    with torch.no_grad():
        together = model(**batch)
        single_tokens = model.text_encoder.tokenize(QUESTIONS[1:2])
        alone = model(batch["pixel_values"][1:2], single_tokens["input_ids"], single_tokens["attention_mask"])
    torch.testing.assert_close(alone[0], together[1], atol=1e-5, rtol=0)


def test_image_index_required_when_counts_differ():
    model = tiny_model().eval()
    batch = batch_for(model)
    batch["image_index"] = None
    with pytest.raises(ValueError, match="image_index"):
        model(**batch)


def test_save_and_load_give_identical_logits(tmp_path):
    model = tiny_model().eval()
    model.training_data = {"dataset": "easy_vqa", "root": ""}
    batch = batch_for(model)
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path / "saved")
    for name in ("config.json", "model.safetensors", "answers.json", "text_encoder"):
        assert (tmp_path / "saved" / name).exists()

    loaded = VQAModel.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        after = loaded(**batch)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert loaded.vocab.answers == ANSWERS
    assert loaded.training_data == {"dataset": "easy_vqa", "root": ""}
    assert not loaded.training


def test_load_names_missing_file(tmp_path):
    tiny_model().save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VQAModel.from_pretrained(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="not found"):
        VQAModel.from_pretrained(tmp_path / "nowhere")


def test_load_rejects_mismatched_weights(tmp_path):
    tiny_model().save_pretrained(tmp_path / "saved")
    config_path = tmp_path / "saved" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["fusion"]["depth"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        VQAModel.from_pretrained(tmp_path / "saved")


def test_load_rejects_unknown_config_key(tmp_path):
    tiny_model().save_pretrained(tmp_path / "saved")
    config_path = tmp_path / "saved" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["fusion"]["heads"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="heads"):
        VQAModel.from_pretrained(tmp_path / "saved")


def test_frozen_encoder_gets_no_gradient():
    model = tiny_model(freeze_blocks=-1)
    model.train()
    logits = model(**batch_for(model))
    logits.sum().backward()
    assert all(p.grad is None for p in model.text_encoder.backbone.parameters())
    assert model.text_encoder.proj.weight.grad is not None
    names = [group["name"] for group in model.param_groups()]
    assert names == ["image_encoder", "fusion"]
    grouped = sum(len(group["params"]) for group in model.param_groups())
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)


def test_frozen_text_cache_matches_uncached_logits():
    cached = tiny_model(freeze_blocks=-1, frozen_output_cache_size=16).eval()
    uncached = tiny_model(freeze_blocks=-1).eval()
    uncached.load_state_dict(cached.state_dict())
    batch = batch_for(cached)
    with torch.no_grad():
        first = cached(**batch)
        second = cached(**batch)  # served from the cache
        reference = uncached(**batch)
    assert len(cached.text_encoder._output_cache) == len(set(QUESTIONS))
    torch.testing.assert_close(first, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(second, reference, atol=1e-6, rtol=0)


def test_cross_entropy_loss_ignores_out_of_vocabulary_rows():
    config = tiny_config()
    config.loss = "ce"
    model = VQAModel(config, AnswerVocab(ANSWERS))
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    expected = -torch.log_softmax(logits[0], dim=-1)[0]
    torch.testing.assert_close(model.compute_loss(logits, targets), expected)


def test_bce_loss_is_scaled_by_answer_count():
    model = tiny_model()
    logits = torch.zeros(2, len(ANSWERS))
    targets = torch.zeros(2, len(ANSWERS))
    # Every element has loss log(2); the mean times A is A * log(2).
    expected = torch.tensor(len(ANSWERS) * 0.6931471805599453)
    torch.testing.assert_close(model.compute_loss(logits, targets), expected)


def test_bad_settings_raise_clear_errors():
    config = tiny_config()
    config.loss = "focal"
    with pytest.raises(ValueError, match="model.loss='focal'"):
        VQAModel(config, AnswerVocab(ANSWERS))
    config = tiny_config()
    config.fusion.attention = "performer"
    with pytest.raises(ValueError, match="performer"):
        VQAModel(config, AnswerVocab(ANSWERS))
    config = tiny_config()
    config.head_fusion = "concat"
    with pytest.raises(ValueError, match="head_fusion='concat'"):
        VQAModel(config, AnswerVocab(ANSWERS))
    config = tiny_config()
    config.head_image_pool = "mean"
    with pytest.raises(ValueError, match="head_image_pool='mean'"):
        VQAModel(config, AnswerVocab(ANSWERS))
    config = tiny_config()
    config.fusion.decoder = "both"
    with pytest.raises(ValueError, match="fusion.decoder='both'"):
        VQAModel(config, AnswerVocab(ANSWERS))
    config = tiny_config()
    config.num_answers = 7
    with pytest.raises(ValueError, match="num_answers=7"):
        VQAModel(config, AnswerVocab(ANSWERS))


def test_product_head_multiplies_pooled_vectors():
    config = tiny_config()
    config.head_fusion = "product"
    torch.manual_seed(0)
    model = VQAModel(config, AnswerVocab(ANSWERS)).eval()
    head = model.head
    text, image = torch.randn(2, 4, 32), torch.randn(2, 6, 32)
    mask = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        expected = head.classifier(head.norm(head.text_pool(text, mask) * head.image_pool(image, None)))
        torch.testing.assert_close(head(text, mask, image, None), expected)


def test_guided_pool_weights_follow_the_question():
    config = tiny_config()
    config.head_image_pool = "guided"
    torch.manual_seed(0)
    model = VQAModel(config, AnswerVocab(ANSWERS)).eval()
    pool = model.head.image_pool
    assert pool.logit_scale == 8.0
    tokens = torch.randn(1, 6, 32).expand(2, 6, 32)
    queries = torch.randn(2, pool.query_proj.in_features)
    mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
    with torch.no_grad():
        pooled = pool(tokens, mask, queries)
        # Same tokens, different questions: different weights, so different pooled vectors.
        assert not torch.allclose(pooled[0], pooled[1], atol=1e-4)
        # Padded tokens get no weight: changing them changes nothing.
        changed = tokens.clone()
        changed[:, 4:] = 100.0
        torch.testing.assert_close(pool(changed, mask, queries), pooled)
        # The weights are the scaled softmax of the per-token scores.
        joint = pool.token_proj(tokens) * pool.query_proj(queries).unsqueeze(1)
        logits = 8.0 * pool.score(joint).squeeze(-1)
        weights = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        torch.testing.assert_close(pooled, pool.proj(torch.einsum("bn,bnd->bd", weights, tokens)))


@pytest.mark.parametrize("attention", ["dba", "full", "linformer"])
def test_text_decoder_shares_image_layers(attention):
    config = tiny_config(attention)
    config.fusion.decoder = "text"
    torch.manual_seed(0)
    model = VQAModel(config, AnswerVocab(ANSWERS)).eval()
    batch = batch_for(model)  # 3 questions about 2 images: rows 0, 1, 0
    calls = []
    hook = model.fusion.image_layers[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        shared = model(**batch)
        # The same images repeated per question give the same logits.
        repeated = batch["pixel_values"].index_select(0, batch["image_index"])
        per_question = model(repeated, batch["input_ids"], batch["attention_mask"])
    hook.remove()
    assert calls == [2, 3]
    torch.testing.assert_close(shared, per_question, atol=1e-5, rtol=0)
    # The question now reads the image: another image changes the logits of the same question.
    with torch.no_grad():
        other = model(torch.randn_like(batch["pixel_values"]), batch["input_ids"], batch["attention_mask"], batch["image_index"])
    assert not torch.allclose(other, shared, atol=1e-4)


def test_text_decoder_reaches_every_parameter():
    config = tiny_config()
    config.fusion.decoder = "text"
    config.head_image_pool = "guided"
    torch.manual_seed(0)
    model = VQAModel(config, AnswerVocab(ANSWERS)).train()
    logits = model(**batch_for(model))
    logits.square().mean().backward()
    for name, parameter in model.fusion.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    assert model.fusion.image_layers[0].cross_attn is None
    assert model.fusion.text_layers[0].cross_attn is not None


def test_config_rejects_unknown_choices():
    from vqa.config import load_config

    with pytest.raises(ValueError, match="model.head_image_pool='mean' is not supported; choose one of self, guided"):
        load_config(None, ["model.head_image_pool=mean"])
    with pytest.raises(ValueError, match="model.fusion.decoder='both' is not supported; choose one of image, text"):
        load_config(None, ["model.fusion.decoder=both"])
    with pytest.raises(ValueError, match=r"invalid override in \['model.fusion.dim=wide'\]"):
        load_config(None, ["model.fusion.dim=wide"])
