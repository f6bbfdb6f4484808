"""The local weights cache and its registry.

Layout of the cache folder (``SURGSEG_WEIGHTS_DIR`` or the platform's user
cache, e.g. ``~/.cache/surgseg/weights``)::

    registry.json          every known checkpoint: name, file, sha256, ...
    sam2.1_hiera_tiny.pt   official checkpoints (downloaded or imported)
    custom/<name>.pt       imported fine-tuned checkpoints

``registry.json`` is rewritten atomically on every change.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..atomic import atomic_path, atomic_write_text
from ..errors import WeightsError
from .hashing import sha256_file
from .official import OFFICIAL, OfficialCheckpoint, official_with_arch, state_arch
from .state_dict import read_state_dict

log = logging.getLogger(__name__)

ENV_DIR = "SURGSEG_WEIGHTS_DIR"
REGISTRY_FILE = "registry.json"
_REGISTRY_VERSION = 1
PathLike = Union[str, os.PathLike]


@dataclass
class WeightsEntry:
    """One checkpoint known to surgseg."""

    name: str
    path: str  # absolute path of the file
    sha256: Optional[str]
    method: str = "sam2"  # method that can load it (sam2, f2paseg, rpsam2, ...)
    variant: Optional[str] = None  # registered SAM2 model variant it was saved from (None: plain SAM2)
    config: Optional[str] = None  # SAM2 config for SAM2-family weights
    base: Optional[str] = None  # what it was fine-tuned from
    source: str = "custom"  # "official" or "custom"
    url: Optional[str] = None
    size_bytes: Optional[int] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    created: Optional[str] = None

    @property
    def file(self) -> Path:
        return Path(self.path)

    @property
    def present(self) -> bool:
        return self.file.is_file()


def weights_dir(override: Optional[PathLike] = None) -> Path:
    """The cache folder: ``override`` > $SURGSEG_WEIGHTS_DIR > user cache."""
    if override is not None:
        folder = Path(override)
    elif os.environ.get(ENV_DIR):
        folder = Path(os.environ[ENV_DIR])
    else:
        from platformdirs import user_cache_dir

        folder = Path(user_cache_dir("surgseg")) / "weights"
    return folder.expanduser()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_registry(folder: Path) -> Dict[str, dict]:
    path = folder / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["entries"])
    except Exception as exc:
        raise WeightsError(f"weights registry {path} is unreadable ({exc}); fix or delete it and re-import") from exc


def _write_registry(folder: Path, entries: Dict[str, dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"version": _REGISTRY_VERSION, "entries": entries}
    atomic_write_text(folder / REGISTRY_FILE, json.dumps(payload, indent=2, sort_keys=True))


def _official_entry(ck: OfficialCheckpoint, folder: Path, recorded: Optional[dict]) -> WeightsEntry:
    entry = WeightsEntry(
        name=ck.name,
        path=str((folder / ck.filename).resolve()),
        sha256=ck.sha256,
        method="sam2",
        config=ck.config,
        source="official",
        url=ck.url,
    )
    if recorded:  # hash seen on first download/import, size, date
        entry.sha256 = ck.sha256 or recorded.get("sha256")
        entry.size_bytes = recorded.get("size_bytes")
        entry.created = recorded.get("created")
    return entry


_ANY = object()


def list_weights(method: Optional[str] = None, *, variant: Any = _ANY,
                 weights_dir_override: Optional[PathLike] = None) -> List[WeightsEntry]:
    """Official checkpoints (present or not), registered custom ones and the
    bundled demo weights (``sample_data/``, see ``bundled.py``); ``method`` /
    ``variant`` (None: plain SAM2) keep only those."""
    folder = weights_dir(weights_dir_override)
    recorded = _read_registry(folder)
    entries = [_official_entry(ck, folder, recorded.get(ck.name)) for ck in OFFICIAL.values()]
    for name, data in sorted(recorded.items()):
        if name in OFFICIAL:
            continue
        known = {f for f in WeightsEntry.__dataclass_fields__}
        entries.append(WeightsEntry(**{k: v for k, v in data.items() if k in known}))
    from .bundled import bundled_entries  # sample_data/'s demo weights

    taken = {e.name for e in entries}
    entries += [e for e in bundled_entries() if e.name not in taken]
    if method is not None:
        entries = [e for e in entries if e.method == method]
    if variant is not _ANY:
        entries = [e for e in entries if e.variant == variant]
    return entries


def get_entry(name: str, *, weights_dir_override: Optional[PathLike] = None) -> Optional[WeightsEntry]:
    for entry in list_weights(weights_dir_override=weights_dir_override):
        if entry.name == name:
            return entry
    return None


def missing_message(ck: OfficialCheckpoint, folder: Path) -> str:
    return (
        f"SAM2 weights {ck.name!r} are not in the weights cache ({folder / ck.filename}). "
        f"Download them with 'surgseg weights download {ck.name}' (from {ck.url}), or on an offline "
        f"machine copy the file over and run 'surgseg weights import PATH/{ck.filename}'."
    )


def resolve_weights(name_or_path: PathLike, *, weights_dir_override: Optional[PathLike] = None) -> Path:
    """Path of a checkpoint given as a file path or a registered name."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate.resolve()
    name = str(name_or_path)
    folder = weights_dir(weights_dir_override)
    if name.endswith(".pt") and name[:-3] in OFFICIAL:
        name = name[:-3]
    entry = get_entry(name, weights_dir_override=weights_dir_override)
    if entry is None:
        known = ", ".join(e.name for e in list_weights(weights_dir_override=weights_dir_override))
        raise WeightsError(f"no checkpoint file or registered weights named {name!r} (known names: {known})")
    if not entry.present:
        if entry.source == "official":
            raise WeightsError(missing_message(OFFICIAL[entry.name], folder))
        raise WeightsError(
            f"registered weights {entry.name!r} point to {entry.path}, which no longer exists; "
            f"re-import it with 'surgseg weights import PATH --name {entry.name}'"
        )
    _check_unchanged(entry, folder)
    return entry.file


_STAMPS = ".verified.json"  # path -> [size, mtime_ns, sha256] of files hashed since they last changed


def _check_unchanged(entry: WeightsEntry, folder: Path) -> None:
    """Weights are used only if their bytes are still the ones registered:
    a file whose size or modification time changed since it was last hashed
    is hashed again, and refused when the hash differs (provenance would
    otherwise record a hash the file no longer has)."""
    if not entry.sha256:
        return
    st = entry.file.stat()
    key = str(entry.file.resolve())
    stamps_path = folder / _STAMPS
    try:
        stamps = json.loads(stamps_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamps = {}
    if stamps.get(key) == [st.st_size, st.st_mtime_ns, entry.sha256]:
        return
    digest = sha256_file(entry.file)
    if digest != entry.sha256:
        raise WeightsError(
            f"weights {entry.name!r} ({entry.file}) changed since they were registered (sha256 {digest[:12]}... "
            f"instead of {entry.sha256[:12]}...): the file was modified or damaged. Restore it, or re-import it "
            f"with 'surgseg weights import FILE --name {entry.name} --force' if the new file is intended"
        )
    stamps[key] = [st.st_size, st.st_mtime_ns, digest]
    try:  # a cache of work done: failing to write it only costs a re-hash next time
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamps_path, json.dumps(stamps, indent=1))
    except OSError as exc:
        log.debug("cannot record verified weights in %s: %s", stamps_path, exc)


def diagnose_official_mismatch(ck: OfficialCheckpoint, path: Path) -> str:
    """Why a file is not ``ck``: unreadable (damaged), not SAM2 or another
    SAM2 model (wrong file), or the right model with other bytes (damaged or
    modified copy, e.g. fine-tuned weights)."""
    try:
        state = read_state_dict(path)
    except WeightsError:
        return "the file cannot be read as a checkpoint: it is damaged or incomplete (download it again)"
    arch = state_arch(state)
    if arch is None:
        heads = sorted({k.split(".", 1)[0] for k in state})
        return (f"wrong file: it is not a SAM2 checkpoint (its weights are {', '.join(heads[:5])}"
                f"{' ...' if len(heads) > 5 else ''})")
    if ck.arch is not None and arch != ck.arch:
        others = official_with_arch(arch)
        what = f"that of {' / '.join(others)}" if others else "none of the official checkpoints'"
        return (f"wrong file: a SAM2 checkpoint of another model (Hiera width {arch[0]}, {arch[1]} blocks, "
                f"SAM {'2.1' if arch[2] else '2'}: {what}; {ck.name} has width {ck.arch[0]}, {ck.arch[1]} blocks)")
    return (f"it has the keys of {ck.name} but other bytes: a damaged or modified copy (download it again; "
            f"fine-tuned weights go in under their own name: 'surgseg weights import PATH --name NAME')")


def _check_official_file(ck: OfficialCheckpoint, path: Path, recorded_sha: Optional[str]) -> str:
    """The file's sha256 if it is ``ck``: the published hash when there is
    one, else the one recorded on first import, else (first import of a
    checkpoint without a published hash) size and architecture."""
    digest = sha256_file(path)
    expected, whose = (ck.sha256, "published") if ck.sha256 else (recorded_sha, "recorded on first import")
    if expected is not None:
        if digest != expected:
            raise WeightsError(
                f"{path} is not the official {ck.name} checkpoint: sha256 {digest} != {whose} {expected}; "
                + diagnose_official_mismatch(ck, path)
            )
        return digest
    size_mb = path.stat().st_size / 1e6
    if not 0.9 * ck.approx_mb <= size_mb <= 1.1 * ck.approx_mb:
        raise WeightsError(
            f"{path} is {size_mb:.1f} MB but the official {ck.name} checkpoint is about {ck.approx_mb:.0f} MB "
            "(incomplete download or a different file)"
        )
    try:
        arch = state_arch(read_state_dict(path))
    except WeightsError as exc:
        raise WeightsError(f"{path} is not the official {ck.name} checkpoint: {exc}") from exc
    if arch is None or (ck.arch is not None and arch != ck.arch):
        raise WeightsError(f"{path} is not the official {ck.name} checkpoint: " + diagnose_official_mismatch(ck, path))
    log.warning("no published sha256 for %s: recorded %s from this copy (trust on first use)", ck.name, digest)
    return digest


def _record(folder: Path, name: str, data: dict) -> None:
    entries = _read_registry(folder)
    entries[name] = data
    _write_registry(folder, entries)


def import_checkpoint(
    path: PathLike,
    *,
    name: Optional[str] = None,
    method: Optional[str] = None,
    variant: Optional[str] = None,
    base: Optional[str] = None,
    metrics: Optional[Dict[str, Any]] = None,
    weights_dir_override: Optional[PathLike] = None,
    force: bool = False,
) -> WeightsEntry:
    """Copy a checkpoint into the cache after checking it.

    An official name (given, or the file is named like one) must match the
    official hash (or, while it is unknown, the recorded one / size + keys);
    anything else is registered as custom weights with its own hash, after
    its name is checked (nothing is written outside the cache) and the file
    is read as a checkpoint of ``method`` (an empty, random or foreign file
    never replaces anything). A registered name is replaced only with
    ``force``.
    """
    src = Path(path)
    if not src.is_file():
        raise WeightsError(f"cannot import {src}: no such file")
    folder = weights_dir(weights_dir_override)
    if name is not None and name not in OFFICIAL:
        _check_name(name)
    official_name = name if name in OFFICIAL else (src.stem if name is None and src.stem in OFFICIAL else None)
    if official_name is not None:
        ck = OFFICIAL[official_name]
        recorded = _read_registry(folder).get(ck.name, {})
        digest = _check_official_file(ck, src, recorded.get("sha256"))
        target = folder / ck.filename
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(src, tmp)
        _record(folder, ck.name, {"sha256": digest, "size_bytes": target.stat().st_size, "created": _now()})
        return _official_entry(ck, folder, _read_registry(folder)[ck.name])
    name = name or src.stem
    _check_name(name)
    existing = _read_registry(folder).get(name)
    if existing and not force:
        raise WeightsError(f"weights {name!r} are already registered ({existing.get('path')}); import under another "
                           "--name, or pass --force to replace them")
    _check_importable(src, method, variant)
    target = folder / "custom" / f"{name}{src.suffix or '.pt'}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(src, tmp)
    return register_checkpoint(
        target, name=name, method=method, base=base, metrics=metrics, variant=variant,
        weights_dir_override=weights_dir_override,
    )


def _check_name(name: str) -> None:
    """Registry names become file names: nothing that leaves the cache folder."""
    if name in OFFICIAL:
        raise WeightsError(f"{name!r} is the name of an official checkpoint; register fine-tuned weights under another name")
    if not name or any(c in name for c in "/\\:") or name.startswith(".") or os.path.isabs(name):
        raise WeightsError(f"invalid weights name {name!r}: use letters, digits, '-', '_', '.'")


# module prefixes every SAM2 state dict has (plain SAM2 and its variants)
_SAM2_PREFIXES = ("image_encoder.", "sam_mask_decoder.", "memory_attention.")


def _check_importable(src: Path, method: Optional[str], variant: Optional[str]) -> None:
    """The file is a checkpoint ``method`` can load: refused before anything is copied."""
    from .state_dict import read_checkpoint, state_dict_of

    what = f"a {method or 'sam2'} checkpoint"
    ckpt = read_checkpoint(src, expected=what)
    saved_by = ckpt.get("method") if isinstance(ckpt.get("method"), str) else None
    if method and saved_by and saved_by != method:
        raise WeightsError(f"cannot import {src} as {method!r} weights: it was trained with method {saved_by!r} "
                           f"(pass --method {saved_by})")
    state = state_dict_of(ckpt, src)
    if saved_by is None and (method in (None, "sam2") or variant):
        missing = [p.rstrip(".") for p in _SAM2_PREFIXES if not any(k.startswith(p) for k in state)]
        if missing:
            raise WeightsError(f"cannot import {src} as SAM2 weights: it has no {', '.join(missing)} parameters "
                               f"(first keys: {', '.join(list(state)[:3])}); pass --method for another method's "
                               "checkpoint")


def register_checkpoint(
    path: PathLike,
    name: Optional[str] = None,
    method: Optional[str] = None,
    base: Optional[str] = None,
    metrics: Optional[Dict[str, Any]] = None,
    *,
    config: Optional[str] = None,
    variant: Optional[str] = None,
    weights_dir_override: Optional[PathLike] = None,
) -> WeightsEntry:
    """Register a (fine-tuned) checkpoint where it is, with its own sha256.

    Called by the trainers after training. ``method``: the method that uses
    it; ``variant``: the SAM2 model variant its weights belong to (see
    ``sam2_engine.variants``), so a name alone builds the right model;
    ``base``: the weights it was fine-tuned from (an official name gives the
    SAM2 config). Re-registering a name replaces its entry. Official names
    are reserved.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"cannot register {file}: no such file")
    name = name or file.stem
    _check_name(name)
    if config is None and base in OFFICIAL:
        config = OFFICIAL[base].config
    entry = WeightsEntry(
        name=name,
        path=str(file.resolve()),
        sha256=sha256_file(file),
        method=method or "sam2",
        variant=variant,
        config=config,
        base=base,
        source="custom",
        size_bytes=file.stat().st_size,
        metrics=dict(metrics or {}),
        created=_now(),
    )
    _record(weights_dir(weights_dir_override), name, asdict(entry))
    return entry


@dataclass
class VerifyResult:
    name: str
    ok: bool
    message: str


def verify_weights(name: Optional[str] = None, *, weights_dir_override: Optional[PathLike] = None) -> List[VerifyResult]:
    """Re-hash present checkpoints (one, or all) against the expected hash."""
    folder = weights_dir(weights_dir_override)
    entries = list_weights(weights_dir_override=weights_dir_override)
    if name is not None:
        entries = [e for e in entries if e.name == name]
        if not entries:
            raise WeightsError(f"no weights named {name!r} (see 'surgseg weights list')")
    results = []
    for e in entries:
        if not e.present:
            if name is not None:
                msg = missing_message(OFFICIAL[e.name], folder) if e.source == "official" else f"file missing: {e.path}"
                results.append(VerifyResult(e.name, False, msg))
            continue
        digest = sha256_file(e.file)
        if e.sha256 is None:
            results.append(VerifyResult(e.name, True, f"present, no known hash; sha256 {digest}"))
        elif digest == e.sha256:
            results.append(VerifyResult(e.name, True, f"ok (sha256 {digest[:12]}...)"))
        else:
            results.append(VerifyResult(e.name, False, f"HASH MISMATCH: {e.path} has {digest}, expected {e.sha256}"))
    return results


def download_weights(
    name: str,
    *,
    url: Optional[str] = None,
    weights_dir_override: Optional[PathLike] = None,
    progressbar: bool = False,
) -> WeightsEntry:
    """Download an official checkpoint with pooch into the cache (``url``
    overrides the official address, e.g. a hospital mirror)."""
    import pooch

    if name not in OFFICIAL:
        raise WeightsError(f"unknown official checkpoint {name!r}; choose from {', '.join(OFFICIAL)}")
    ck = OFFICIAL[name]
    folder = weights_dir(weights_dir_override)
    folder.mkdir(parents=True, exist_ok=True)
    recorded = _read_registry(folder).get(name, {})
    known = recorded.get("sha256")
    source = url or ck.url
    partial = folder / f".download-{ck.filename}"
    try:
        # hash checked below by _check_official_file (published or recorded
        # hash, with the diagnosis of a mismatch), before the file is used
        fetched = pooch.retrieve(
            source,
            known_hash=None,
            fname=partial.name,
            path=folder,
            progressbar=progressbar,
        )
    except Exception as exc:  # network errors of any kind
        raise WeightsError(
            f"cannot download {ck.filename} from {source} ({type(exc).__name__}: {exc}). "
            f"On an offline machine copy the file from elsewhere and run 'surgseg weights import PATH/{ck.filename}'."
        ) from exc
    fetched = Path(fetched)
    try:
        digest = _check_official_file(ck, fetched, known)
        os.replace(fetched, folder / ck.filename)
    finally:
        if fetched.exists():
            fetched.unlink()
    target = folder / ck.filename
    _record(folder, name, {"sha256": digest, "size_bytes": target.stat().st_size, "created": _now()})
    return _official_entry(ck, folder, _read_registry(folder)[name])
