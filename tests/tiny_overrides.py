"""Config overrides for a tiny real VQA model: timm's test EfficientNet and a one-layer random BERT."""

TINY_MODEL_OVERRIDES = [
    "model.image.name=test_efficientnet",
    "model.text.pretrained=false",
    "model.text.max_length=24",
    "model.text.config_overrides.hidden_size=32",
    "model.text.config_overrides.num_hidden_layers=1",
    "model.text.config_overrides.num_attention_heads=2",
    "model.text.config_overrides.intermediate_size=64",
    "model.fusion.dim=32",
    "model.fusion.num_heads=2",
    "model.fusion.depth=1",
    "model.fusion.dropout=0.0",
    "model.loss=ce",
]
