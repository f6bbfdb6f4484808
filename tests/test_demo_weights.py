"""The bundled demonstration weights (sample_data/*_demo): each folder's
weights.json pins its file's SHA-256 and is offered by name, its model card
says what it is (not a clinical model), how it was made (the exact command,
in scripts/train_demo_weights.sh) and its held-out scores; all weights
together stay within 40 MB."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = sorted((REPO / "sample_data").glob("*_demo"))


def test_every_bundled_model_is_pinned_registered_and_explained():
    from surgseg_core.weights import list_weights
    from surgseg_core.weights.hashing import sha256_file

    if not FOLDERS:
        pytest.skip("no bundled demo weights in sample_data/")
    script = (REPO / "scripts" / "train_demo_weights.sh").read_text()
    listed = {e.name: e for e in list_weights()}
    total = 0
    for folder in FOLDERS:
        meta = json.loads((folder / "weights.json").read_text())
        weights = folder / meta["file"]
        assert weights.suffix == ".safetensors" and sha256_file(weights) == meta["sha256"], folder
        total += weights.stat().st_size
        entry = listed[meta["name"]]
        assert entry.source == "bundled" and entry.method == meta["method"] and entry.variant == meta.get("variant")
        card = (folder / "MODEL_CARD.md").read_text()
        assert "not a clinical model" in card and meta["sha256"] in card
        assert "held-out" in card.lower() and meta["metrics"], folder
        command = card.split("Command (exact): `")[1].split("`")[0]
        module = command.split()[2]  # python -m MODULE OUT ...
        assert module in script and f"--export {weights.relative_to(REPO)}" in command.replace(str(REPO) + "/", "")
    assert total <= 40e6, f"bundled weights take {total / 1e6:.1f} MB (limit 40 MB)"
