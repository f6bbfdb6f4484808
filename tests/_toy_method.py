"""A tiny real method for trainer tests: a 2-layer conv net segmenting
"red" pixels in small synthetic images (or any image_mask folder).

Registered as ``toy``; subprocesses reach it as ``_toy_method:toy`` with
``tests/`` on PYTHONPATH.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from surgseg_core.datasets import ImageMaskFolder
from surgseg_core.training.method import MethodSpec, register_method

_CALLS = {"n": 0}


class SyntheticRed(torch.utils.data.Dataset):
    """Random colour noise; mask = pixels whose red channel beats green and blue."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.masks = ((self.images[:, 0] > self.images[:, 1]) & (self.images[:, 0] > self.images[:, 2])).long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "name": f"s{i:03d}"}


def build_model(cfg):
    _CALLS["n"] = 0
    width = int(cfg.get("width", 4))
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(),
        torch.nn.Conv2d(width, int(cfg.get("num_classes", 2)), 1),
    )


def build_datasets(cfg):
    if cfg.get("data_root"):
        size = cfg.get("size")
        train = ImageMaskFolder(cfg["data_root"], size=tuple(size) if size else None)
        val = ImageMaskFolder(cfg["val_root"], size=tuple(size) if size else None) if cfg.get("val_root") else None
        return train, val
    n, size = int(cfg.get("n_train", 16)), int(cfg.get("size_px", 12))
    return SyntheticRed(n, size, 1), SyntheticRed(int(cfg.get("n_val", 8)), size, 2)


def loss(outputs, batch, cfg):
    _CALLS["n"] += 1
    if cfg.get("sleep_per_step"):
        time.sleep(float(cfg["sleep_per_step"]))
    value = F.cross_entropy(outputs.float(), batch["mask"])
    if cfg.get("nan_at_call") and _CALLS["n"] >= int(cfg["nan_at_call"]):
        value = value * float("nan")
    return value


def metrics(outputs, batch, cfg):
    pred = outputs.argmax(1)
    fg_p, fg_t = pred == 1, batch["mask"] == 1
    inter = (fg_p & fg_t).sum().item()
    dice = 2 * inter / max(1, fg_p.sum().item() + fg_t.sum().item())
    return {"dice": dice, "acc": (pred == batch["mask"]).float().mean().item()}


def evaluate(model, data, cfg, *, progress=None, cancel=None):
    ds = ImageMaskFolder(data)
    dices = []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            out = model(item["image"][None].to(next(model.parameters()).device))
            dices.append(metrics(out.cpu(), {"mask": item["mask"][None]}, cfg)["dice"])
    out = {"dice": float(np.mean(dices)), "n": len(ds)}
    if cfg.get("with_table"):  # as methods with a paper table (f2paseg): written next to --out as .md
        out["markdown"] = f"| dice | n |\n|---|---|\n| {out['dice']:.3f} | {len(ds)} |"
    return out


def predict(model, inputs, out_dir, cfg, *, progress=None, cancel=None):
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        path = Path(path)
        files = sorted(path.glob("*.png")) if path.is_dir() else [path]
        for f in files:
            img = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
            with torch.no_grad():
                pred = model(img[None]).argmax(1)[0].numpy().astype(np.uint8)
            target = out_dir / f"{f.stem}_mask.png"
            Image.fromarray(pred).save(target)
            written.append(target)
    return written


toy = register_method(
    MethodSpec(
        name="toy",
        build_model=build_model,
        build_datasets=build_datasets,
        loss=loss,
        metrics=metrics,
        forward=lambda model, batch: model(batch["image"]),
        default_config={"lr": 0.05, "batch_size": 4, "epochs": 3, "weight_decay": 0.0, "scheduler": "none",
                        "width": 4, "num_classes": 2, "size": None, "n_train": 16, "n_val": 8, "size_px": 12,
                        "sleep_per_step": None, "nan_at_call": None, "with_table": False},
        monitor="val_dice",
        monitor_mode="max",
        evaluate=evaluate,
        predict=predict,
        description="toy red-pixel segmenter for tests",
    )
)
