"""Image and text encoders: shapes, token counts, padding, freezing, preprocessing."""

from __future__ import annotations

import socket

import pytest
import torch
from PIL import Image

from vqa.config import ImageEncoderConfig, TextEncoderConfig
from vqa.encoders import ImageEncoder, TextEncoder
from vqa.encoders.image import normalize_pretrained, sincos_position_embedding_2d

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture
def no_network(monkeypatch):
    """Make every socket connection in this test process fail."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_text_config(**kwargs) -> TextEncoderConfig:
    return TextEncoderConfig(pretrained=False, config_overrides=dict(TINY_BERT), **kwargs)


def assert_all_grads_nonzero(module: torch.nn.Module) -> None:
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            assert parameter.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# ---------------------------------------------------------------- image encoder


def test_vit_forward_backward():
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=64), dim=24)
    tokens = encoder(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 16, 24)  # (64 / 16) ** 2 patches, class token dropped
    assert torch.isfinite(tokens).all()
    tokens.square().mean().backward()
    assert_all_grads_nonzero(encoder)


def test_vit_prefix_tokens_kept():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=64, keep_prefix_tokens=True), dim=24)
    assert encoder.backbone.num_prefix_tokens == 1
    assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 17, 24)


def test_vit_token_count_grows_with_size():
    small = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=32), dim=8)
    large = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=96), dim=8)
    assert small.num_tokens() == 4
    assert large.num_tokens() == 36
    assert large(torch.randn(1, 3, 96, 96)).shape[1] == 36


@pytest.mark.parametrize(
    ("name", "model_kwargs"),
    [
        ("test_efficientnet", {}),
        # timm's ResNet zero-initialises the last BatchNorm of each block, which zeroes the inner gradients.
        ("test_resnet", {"zero_init_last": False}),
        ("test_convnext", {}),
    ],
)
def test_cnn_forward_backward(name, model_kwargs):
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(name=name, img_size=64, model_kwargs=model_kwargs), dim=16)
    assert not encoder.is_vit
    tokens = encoder(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 4, 16)  # last stage has stride 32: a 2 x 2 map
    tokens.square().mean().backward()
    assert_all_grads_nonzero(encoder)


def test_cnn_token_count_grows_with_size():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=64), dim=16)
    assert encoder.num_tokens() == 4
    assert encoder.num_tokens(128) == 16
    assert encoder(torch.randn(1, 3, 128, 128)).shape == (1, 16, 16)


def test_cnn_feature_stage_selects_stride():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=64, feature_stage=1), dim=16)
    reduction = encoder.backbone.feature_info.reduction()[0]
    assert reduction == 4
    assert encoder.num_tokens() == (64 // reduction) ** 2


def test_cnn_feature_stage_out_of_range():
    with pytest.raises(ValueError, match="feature_stage=9"):
        ImageEncoder(ImageEncoderConfig(name="test_efficientnet", feature_stage=9), dim=16)


def test_cnn_tokens_carry_position():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=64), dim=16).eval()
    with torch.no_grad():
        tokens = encoder(torch.zeros(1, 3, 64, 64))[0]
    # A blank image gives the same feature at every interior position; only the position embedding differs.
    assert not torch.allclose(tokens[0], tokens[3])


def test_sincos_position_embedding_values():
    embedding = sincos_position_embedding_2d(2, 3, 8)
    assert embedding.shape == (6, 8)
    # Position (0, 0): sin terms 0, cos terms 1.
    assert torch.equal(embedding[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    # Position (1, 2) is row-major index 5; the first frequency is 1.
    assert embedding[5, 0].item() == pytest.approx(torch.tensor(1.0).sin().item())
    assert embedding[5, 4].item() == pytest.approx(torch.tensor(2.0).sin().item())
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding_2d(2, 2, 6)


def test_image_freeze_blocks_stops_gradients():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=64, freeze_blocks=1), dim=16)
    encoder.train()
    encoder(torch.randn(2, 3, 64, 64)).square().mean().backward()

    backbone = encoder.backbone
    frozen = [backbone.conv_stem, backbone.bn1, backbone.blocks[0]]
    for module in frozen:
        for parameter in module.parameters():
            assert not parameter.requires_grad
            assert parameter.grad is None
    for parameter in backbone.blocks[1].parameters():
        assert parameter.grad is not None
        assert parameter.grad.abs().sum() > 0
    assert encoder.proj.weight.grad.abs().sum() > 0


def test_image_frozen_batchnorm_stats_fixed():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=64, freeze_blocks=1), dim=16)
    encoder.train()
    frozen_bn = encoder.backbone.bn1
    trained_bn = encoder.backbone.blocks[1][0].bn1
    frozen_before = frozen_bn.running_mean.clone()
    trained_before = trained_bn.running_mean.clone()

    encoder(torch.randn(4, 3, 64, 64) * 3 + 1)

    assert not frozen_bn.training
    assert trained_bn.training
    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert not torch.equal(trained_bn.running_mean, trained_before)


def test_image_freeze_all_keeps_projection_trainable():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=32, freeze_blocks=-1), dim=8)
    encoder.train()
    encoder(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert all(parameter.grad is None for parameter in encoder.backbone.parameters())
    assert not encoder.backbone.training
    assert encoder.proj.weight.grad.abs().sum() > 0
    assert encoder.norm.weight.grad.abs().sum() > 0


def test_vit_freeze_covers_embeddings():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=32, freeze_blocks=1), dim=8)
    backbone = encoder.backbone
    assert not backbone.cls_token.requires_grad
    assert not backbone.pos_embed.requires_grad
    assert not any(p.requires_grad for p in backbone.patch_embed.parameters())
    assert not any(p.requires_grad for p in backbone.blocks[0].parameters())
    assert all(p.requires_grad for p in backbone.blocks[1].parameters())


def test_image_unfreeze_restores_training():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=32, freeze_blocks=-1), dim=8)
    encoder.freeze(0)
    encoder.train()
    assert all(p.requires_grad for p in encoder.backbone.parameters())
    assert encoder.backbone.bn1.training


def test_image_freeze_too_many_blocks():
    with pytest.raises(ValueError, match="freeze_blocks=99"):
        ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=32, freeze_blocks=99), dim=8)


def test_image_param_groups_use_lr_mult():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_vit", img_size=32, lr_mult=0.1, freeze_blocks=1), dim=8)
    groups = {group["name"]: group for group in encoder.param_groups(1e-3)}
    assert groups["ImageEncoder.backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["ImageEncoder.projection"]["lr"] == pytest.approx(1e-3)
    grouped = sum(p.numel() for group in groups.values() for p in group["params"])
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert grouped == trainable
    assert all(p.requires_grad for group in groups.values() for p in group["params"])


def test_image_load_weights_false_ignores_pretrained(tmp_path):
    cfg = ImageEncoderConfig(name="test_vit", img_size=32, pretrained=str(tmp_path / "missing.safetensors"))
    encoder = ImageEncoder(cfg, dim=8, load_weights=False)
    assert encoder.num_tokens() == 4


def test_image_transform_keeps_whole_image():
    encoder = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", img_size=48), dim=8)
    assert encoder.data_config["input_size"] == (3, 48, 48)
    # Left half white, right half black: a crop or a flip would move or lose the boundary.
    image = Image.new("RGB", (120, 60), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 60, 60))
    for transform in (encoder.build_transform(False), encoder.build_transform(True)):
        tensor = transform(image)
        assert tensor.shape == (3, 48, 48)
        assert tensor[:, :, :20].mean() > tensor[:, :, 28:].mean() + 1.0
    names = [type(step).__name__ for step in encoder.build_transform(True).transforms]
    assert "ColorJitter" in names
    assert "ColorJitter" not in [type(step).__name__ for step in encoder.build_transform(True, augment=False).transforms]
    assert not any("Crop" in name and name != "CenterCrop" for name in names)
    assert not any("Flip" in name for name in names)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("off", "off"), ("False", "off"), ("", "off"), ("hub", "hub"), ("True", "hub"), ("timm/x.y", "timm/x.y")],
)
def test_normalize_pretrained(value, expected):
    assert normalize_pretrained(value) == expected


# ---------------------------------------------------------------- text encoder


@pytest.fixture(scope="module")
def tiny_text_encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(tiny_text_config(max_length=12), dim=16)


def test_text_forward_backward(tiny_text_encoder):
    encoder = tiny_text_encoder
    assert encoder.backbone.config.hidden_size == 32
    assert encoder.backbone.config.num_hidden_layers == 2
    batch = encoder.tokenize(["what color is the cat?", "is the ball on the left?"])
    assert set(batch.keys()) == {"input_ids", "attention_mask"}
    encoder.zero_grad()
    features = encoder(**batch)
    assert features.shape == (2, batch["input_ids"].shape[1], 16)
    features.square().mean().backward()
    assert_all_grads_nonzero(encoder)


def test_text_truncates_to_max_length(tiny_text_encoder):
    batch = tiny_text_encoder.tokenize(["word " * 50, "short"])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"][1].sum() < 12


def test_text_padding_leaves_real_tokens_unchanged(tiny_text_encoder):
    encoder = tiny_text_encoder.eval()
    batch = encoder.tokenize(["how many red cubes are there?"])
    length = batch["input_ids"].shape[1]
    pad_id = encoder.tokenizer.pad_token_id
    padded_ids = torch.cat([batch["input_ids"], torch.full((1, 5), pad_id)], dim=1)
    padded_mask = torch.cat([batch["attention_mask"], torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = encoder(batch["input_ids"], batch["attention_mask"])
        padded = encoder(padded_ids, padded_mask)
    assert padded.shape[1] == length + 5
    torch.testing.assert_close(padded[:, :length], plain, atol=1e-5, rtol=1e-5)


def test_text_freeze_blocks_stops_gradients():
    encoder = TextEncoder(tiny_text_config(freeze_blocks=1), dim=16).train()
    batch = encoder.tokenize(["is it a circle?"])
    encoder(**batch).square().mean().backward()
    backbone = encoder.backbone
    for module in (backbone.embeddings, backbone.encoder.layer[0]):
        for parameter in module.parameters():
            assert not parameter.requires_grad
            assert parameter.grad is None
        assert not module.training
    for parameter in backbone.encoder.layer[1].parameters():
        assert parameter.grad is not None
        assert parameter.grad.abs().sum() > 0
    assert encoder.proj.weight.grad.abs().sum() > 0


def test_text_freeze_all():
    encoder = TextEncoder(tiny_text_config(freeze_blocks=-1), dim=16).train()
    encoder(**encoder.tokenize(["what shape?"])).sum().backward()
    assert all(p.grad is None for p in encoder.backbone.parameters())
    assert encoder.proj.weight.grad is not None
    groups = encoder.param_groups(1.0)
    assert [group["name"] for group in groups] == ["TextEncoder.projection"]


def test_text_freeze_too_many_layers():
    with pytest.raises(ValueError, match="freeze_blocks=3"):
        TextEncoder(tiny_text_config(freeze_blocks=3), dim=16)


def test_text_support_files_rebuild_offline(tmp_path, monkeypatch, tiny_text_encoder, no_network):
    tiny_text_encoder.save_support_files(tmp_path / "text")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The original name points nowhere, so everything must come from the saved folder.
    cfg = TextEncoderConfig(name=str(tmp_path / "gone"), pretrained=True, max_length=12)
    rebuilt = TextEncoder(cfg, dim=16, load_weights=False, local_dir=tmp_path / "text")
    rebuilt.load_state_dict(tiny_text_encoder.state_dict())

    questions = ["what color is the cat?", "is the ball on the left?"]
    assert torch.equal(rebuilt.tokenize(questions)["input_ids"], tiny_text_encoder.tokenize(questions)["input_ids"])
    rebuilt.eval()
    tiny_text_encoder.eval()
    batch = tiny_text_encoder.tokenize(questions)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**batch), tiny_text_encoder(**batch))


def test_text_local_dir_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder(tiny_text_config(), dim=16, load_weights=False, local_dir=tmp_path)
