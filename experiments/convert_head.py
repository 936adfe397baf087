"""Carry a classifier head over to another class list by class name (ImageNet-22K -> ImageNet-1K by WordNet id).

::

    python experiments/convert_head.py unireplknet_s_in22k_pretrain.pth s_in22k_head1k.pth
    python experiments/run.py experiment=imagenet1k_384_unireplknet_s data.root=/data/imagenet \\
        backbone.init_from=s_in22k_head1k.pth

The public fine-tuning script (ConvNeXt's) drops a head whose class count differs and trains a new one from
scratch; ``backbone.init_from=<22K file>`` does the same here (the drop is logged). This tool keeps what the 22K
classifier already knows instead: the rows of ``head.weight`` / ``head.bias`` of the target classes are picked by
WordNet id from the source class list, so the fine-tuning starts from a working 1K classifier. A target class
the source lacks (ImageNet-1K's n04399382 "teddy bear" is not among the 21,841 classes of the fall 2011
ImageNet-22K release) gets a zero weight row and the mean bias, and is named in the output.

The class lists are timm's files (``timm/data/_info/<name>_synsets.txt``: ``imagenet22k``, ``imagenet``,
``imagenet12k``, ...), in the sorted-folder order that ImageFolder and the published checkpoints use; any other
list is a text file with one class name per line (``--source-classes`` / ``--target-classes``). Hand-written
because neither timm nor torchvision re-indexes a checkpoint's head; timm only ships the lists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm.data
import torch

from core.checkpoint import read_state_dict

SYNSET_DIR = Path(timm.data.__file__).parent / "_info"


def class_list(name_or_file: str) -> list[str]:
    """A timm synset list by name (``imagenet22k``) or a text file of class names, one per line."""
    path = Path(name_or_file)
    if not path.is_file():
        path = SYNSET_DIR / f"{name_or_file}_synsets.txt"
    if not path.is_file():
        known = sorted(p.name.removesuffix("_synsets.txt") for p in SYNSET_DIR.glob("*_synsets.txt"))
        raise FileNotFoundError(f"no class list {name_or_file!r}: give a file or one of timm's: {', '.join(known)}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def convert_head(state: dict[str, torch.Tensor], source: list[str], target: list[str],
                 prefix: str = "head.") -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with its ``<prefix>weight`` / ``<prefix>bias`` re-indexed from ``source`` to ``target`` classes;
    also returns the target classes the source lacks (zero weight, mean bias)."""
    weight, bias = state.get(f"{prefix}weight"), state.get(f"{prefix}bias")
    if weight is None or bias is None:
        raise KeyError(f"the checkpoint has no {prefix}weight / {prefix}bias (keys like {sorted(state)[:3]})")
    if weight.shape[0] != len(source) or bias.shape[0] != len(source):
        raise ValueError(f"the head has {weight.shape[0]} classes but the source class list has {len(source)}")
    row = {name: i for i, name in enumerate(source)}
    missing = [name for name in target if name not in row]
    new_weight = torch.zeros(len(target), weight.shape[1], dtype=weight.dtype)
    new_bias = torch.full((len(target),), float(bias.mean()), dtype=bias.dtype)
    for j, name in enumerate(target):
        if name in row:
            new_weight[j], new_bias[j] = weight[row[name]], bias[row[name]]
    out = dict(state)
    out[f"{prefix}weight"], out[f"{prefix}bias"] = new_weight, new_bias
    return out, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint whose head is indexed by --source-classes")
    parser.add_argument("out", type=Path, help="where to write the converted state dict")
    parser.add_argument("--source-classes", default="imagenet22k", help="timm list name or file (imagenet22k)")
    parser.add_argument("--target-classes", default="imagenet", help="timm list name or file (imagenet = 1K)")
    parser.add_argument("--prefix", default="head.", help="key prefix of the classifier (head.)")
    args = parser.parse_args(argv)
    source, target = class_list(args.source_classes), class_list(args.target_classes)
    state, missing = convert_head(read_state_dict(args.checkpoint), source, target, args.prefix)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"{args.out}: head {len(source)} -> {len(target)} classes, {len(target) - len(missing)} carried over"
          + (f"; new rows (zero weight, mean bias) for {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
