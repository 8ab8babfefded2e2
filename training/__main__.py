"""``python -m training train|eval|pretrain-vision|add-feature-layers``: the CAFe trainer, its evaluation,
vision-tower pretraining for from-scratch models (training/vision_pretrain.py), and widening a LLaVA
projector to more vision layers (training/feature_layers.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _config_args(argv: list[str], prog: str, description: str, config_help: str) -> argparse.Namespace:
    """The options every config-driven command shares: --config, --set KEY=VALUE (repeatable), --resume."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", help=config_help)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable)")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    return ap.parse_args(argv)


def _train(argv: list[str]) -> int:
    from cafe_core.errors import CafeError
    from data.errors import DataFormatError

    from .config import ConfigError, load_config
    from .modes import ModeUnavailable
    from .trainer import NonFiniteLoss, train

    args = _config_args(argv, "python -m training train", "Train a CAFe model.", "YAML file (training/configs/*.yaml)")
    try:
        cfg = load_config(args.config, args.overrides)
        final = train(cfg, resume=args.resume)
    except (ConfigError, DataFormatError, ModeUnavailable, CafeError, FileNotFoundError) as e:  # bad input: 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:  # the run diverged: 3
        print(f"error: {e}", file=sys.stderr)
        return 3
    if final is not None:
        print(f"final model: {final}")
    return 0


def _pretrain_vision(argv: list[str]) -> int:
    from cafe_core.errors import CafeError

    from .config import ConfigError, load_config
    from .vision_pretrain import VisionPretrainConfig, pretrain_vision

    args = _config_args(argv, "python -m training pretrain-vision",
                        "Pretrain a from-scratch LVLM's vision tower to tag sample-world objects.",
                        "YAML file (training/configs/demo-stage0-vision.yaml)")
    try:
        final = pretrain_vision(load_config(args.config, args.overrides, cls=VisionPretrainConfig), resume=args.resume)
    except (ConfigError, CafeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"final model: {final}")
    return 0


def _add_feature_layers(argv: list[str]) -> int:
    from cafe_core.errors import CafeError

    from .config import ConfigError
    from .feature_layers import main as widen

    try:
        return widen(argv)
    except (ConfigError, CafeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    commands = ("train", "eval", "pretrain-vision", "add-feature-layers")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m training {{{','.join(commands)}}} ...  (--help after the command for its options)",
              file=sys.stderr)
        return 2
    if argv[0] == "train":
        return _train(argv[1:])
    if argv[0] == "pretrain-vision":
        return _pretrain_vision(argv[1:])
    if argv[0] == "add-feature-layers":
        return _add_feature_layers(argv[1:])
    from .evaluate import main as eval_main

    return eval_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
