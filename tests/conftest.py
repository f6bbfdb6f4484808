"""Shared fixtures. Real clips live in ../shared/realdata (never in the repo);
tests that need them skip with a reason when the folder is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# No triton pre-import here: it hid a napari segfault (triton's LLVM loaded
# after Mesa's). The plugin keeps triton out itself (napari_surgseg/_triton_guard.py)
# and tests/test_fresh_napari.py checks that in processes nothing was imported into.

# napari's settings (the plugin sets reader preferences on first use) go to a
# throwaway file, never the developer's own; before anything imports napari.
if "NAPARI_CONFIG" not in os.environ:
    import tempfile

    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="surgseg-napari-")) / "settings.yaml")

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SURGSEG_REALDATA", REPO.parent / "shared" / "realdata"))
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real surgical clips not found at {REALDATA} (set SURGSEG_REALDATA)")
    return REALDATA


def realdata_file(rel: str) -> Path:
    """Path of a file under realdata, or skip the calling test with a reason."""
    path = REALDATA / rel
    if not path.exists():
        pytest.skip(f"real data file missing: {path}")
    return path


@pytest.fixture(autouse=True)
def _torch_threads():
    # 2-core CI: keep torch from oversubscribing when tests run in parallel.
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass
    yield


@pytest.fixture(autouse=True, scope="session")
def _training_device_override():
    """SURGSEG_TEST_TRAIN_DEVICE (e.g. cuda) and SURGSEG_TEST_TRAIN_PRECISION
    (e.g. bf16): every ``trainer.train`` run of the tests on that device and
    precision instead of their configs' CPU float32 (benchmarks/gpu_checks.sh
    runs the training tests this way on a lent GPU). Unset: the tests as written."""
    device = os.environ.get("SURGSEG_TEST_TRAIN_DEVICE")
    precision = os.environ.get("SURGSEG_TEST_TRAIN_PRECISION")
    if device or precision:
        from surgseg_core.training import trainer

        real = trainer.resolve_config

        def forced(*args, **kwargs):
            cfg = dict(real(*args, **kwargs))
            cfg.update({k: v for k, v in (("device", device), ("precision", precision)) if v})
            return cfg

        patch = pytest.MonkeyPatch()  # session-wide: module fixtures' reference runs too
        patch.setattr(trainer, "resolve_config", forced)
        yield
        patch.undo()
    else:
        yield


@pytest.fixture(autouse=True, scope="session")
def _autosave_in_tmp(tmp_path_factory):
    # Widgets autosave the layers users edit: keep every test's snapshots out
    # of the real user data folder.
    patch = pytest.MonkeyPatch()
    patch.setenv("SURGSEG_AUTOSAVE_DIR", str(tmp_path_factory.mktemp("autosave")))
    # result layers are sparse on-disk stacks: not in the user's cache either
    patch.setenv("SURGSEG_LABEL_STACK_DIR", str(tmp_path_factory.mktemp("label_stacks")))
    # the cache of video hashes (provenance): not the user's either
    patch.setenv("SURGSEG_HASH_CACHE", str(tmp_path_factory.mktemp("hashes") / "file_hashes.json"))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _autosave_per_test(tmp_path_factory, monkeypatch):
    # Layers without a video autosave into one "no-source" folder, one file per
    # layer name: a layer left alive by an earlier test (same name, its save
    # timer or worker still pending) could overwrite this test's snapshot, which
    # made a CI run wait 30 s for a snapshot that had been replaced.
    monkeypatch.setenv("SURGSEG_AUTOSAVE_DIR", str(tmp_path_factory.mktemp("autosave")))
