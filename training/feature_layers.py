"""Give a trained LLaVA's projector more vision layers to read, without changing what the model does.

``benchmarks/spatial_probe.py`` found where the demo model loses "where": a token's column third is
readable from the vision tower's embeddings (0.99, position embeddings added there), fades through its
layers (0.64 after the last, which is all the projector reads) and the projector keeps 0.41 of it
(majority 0.34). LLaVA's ``vision_feature_layer`` may be a list: the projector then reads those layers'
outputs side by side. This adds layers to that list and widens the projector's first linear layer for
them, with **zero** weights by default, so the new folder answers and embeds exactly as the old one until
training uses the new inputs; ``--init-scale`` draws them at that fraction of the old weights' spread
instead (zero weights get no useful gradient while nothing downstream reads position yet; small random
ones pass some of it on at once). The result is a standard ``LlavaForConditionalGeneration`` folder, in
float32 (it is a base for training).

    python -m training add-feature-layers runs/demo-stage5/final runs/demo-wide/base --layer 0 [--init-scale 0.3]
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import publish_folder
from .config import ConfigError


def feature_layers(config) -> list[int]:
    layers = config.vision_feature_layer
    return [layers] if isinstance(layers, int) else list(layers)


def add_feature_layers(model, layers: list[int], init_scale: float = 0.0, seed: int = 0):
    """Append ``layers`` to ``model``'s vision_feature_layer (in place) and widen its projector: the new
    input weights are zero, or normal with ``init_scale`` x the old weights' standard deviation."""
    if model.config.model_type != "llava":
        raise ConfigError(f"add-feature-layers reads plain LLaVA projectors; this is {model.config.model_type}")
    old = feature_layers(model.config)
    n_hidden = model.config.vision_config.num_hidden_layers + 1  # the embeddings, then each layer
    read = {layer % n_hidden for layer in old}  # -1 and n_hidden - 1 are the same layer
    for layer in layers:
        if not -n_hidden <= layer < n_hidden or layer % n_hidden in read:
            raise ConfigError(f"layer {layer}: already read, or not one of the tower's {n_hidden} hidden states")
        read.add(layer % n_hidden)
    proj = model.model.multi_modal_projector.linear_1
    width = model.config.vision_config.hidden_size
    if proj.in_features != width * len(old):
        raise ConfigError(f"projector reads {proj.in_features} features, not {len(old)} x {width}")
    wide = torch.nn.Linear(width * (len(old) + len(layers)), proj.out_features, bias=proj.bias is not None,
                           device=proj.weight.device, dtype=proj.weight.dtype)
    with torch.no_grad():
        wide.weight.zero_()
        if init_scale > 0:
            gen = torch.Generator().manual_seed(seed)
            std = init_scale * proj.weight.float().std().item()
            wide.weight[:, proj.in_features:] = torch.randn(wide.weight[:, proj.in_features:].shape, generator=gen) * std
        wide.weight[:, :proj.in_features] = proj.weight
        if proj.bias is not None:
            wide.bias.copy_(proj.bias)
    model.model.multi_modal_projector.linear_1 = wide
    model.config.vision_feature_layer = old + list(layers)
    return model


def main(argv: list[str]) -> int:
    import argparse

    from cafe_core.loading import load_model_and_processor

    ap = argparse.ArgumentParser(prog="python -m training add-feature-layers", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a LLaVA model folder or hub id")
    ap.add_argument("out", help="folder to write (replaced atomically)")
    ap.add_argument("--layer", type=int, action="append", required=True,
                    help="vision hidden state to add (0: the embeddings; repeatable)")
    ap.add_argument("--init-scale", type=float, default=0.0,
                    help="new weights ~ N(0, (scale x old weights' std)^2); 0: zero, nothing changes (default %(default)s)")
    args = ap.parse_args(argv)
    if args.init_scale < 0:
        raise ConfigError("--init-scale must be >= 0")
    model, processor = load_model_and_processor(args.model, "cpu", "float32")
    add_feature_layers(model, args.layer, args.init_scale)

    def write(folder: Path):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    publish_folder(Path(args.out), write)
    print(f"{args.out}: vision_feature_layer {model.config.vision_feature_layer}")
    return 0
