"""The one training loop every method uses.

``train(method, config, run_dir=...)`` handles device and precision, AdamW
parameter groups, the LR schedule, gradient clipping and accumulation,
per-epoch validation, best-checkpoint selection on a named metric, early
stopping, seeding, atomic checkpoints, resuming and DDP (``torchrun``).
The method (:class:`MethodSpec`) only supplies model, data, loss and metrics.

Reproducibility: every epoch reseeds torch/numpy/python from ``seed`` and
the epoch number and draws its data order from ``DistributedSampler(seed)``
with ``set_epoch``; so a run resumed from ``last.pt`` (even after ``kill
-9``) repeats exactly the epochs the interrupted run would have done.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .. import __version__
from ..config import check_config, merge_config, plain_config, save_config
from ..device import resolve_device
from ..device import resolve_precision as resolve_dtype
from ..errors import Cancelled, ConfigError, DatasetError, TrainingError, WeightsError, WriteError
from ..progress import CancelToken, ProgressCallback, report
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model_weights,
    model_state_for_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import DistInfo, barrier, broadcast_flag, init_distributed, reduce_weighted, shutdown_distributed
from .method import MethodSpec, get_method
from .optim import build_optimizer, build_param_groups, build_scheduler, per_step
from .run_log import RunLogger, read_metrics

log = logging.getLogger(__name__)

TRAINER_DEFAULTS: Dict[str, Any] = {
    "epochs": 10,
    "batch_size": 4,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "layer_decay": None,
    "scheduler": "cosine",  # cosine | plateau | none
    "min_lr": 0.0,
    "min_lr_ratio": None,
    "plateau_factor": 0.5,
    "plateau_patience": 2,
    "early_stopping_patience": 0,  # 0: off
    "grad_clip": None,
    "grad_accum": 1,
    "device": "auto",  # auto | cpu | cuda | mps
    "precision": "auto",  # auto | bf16 | fp32
    "seed": 0,
    "num_workers": 0,
    "monitor": None,  # default: MethodSpec.monitor
    "monitor_mode": None,  # default: MethodSpec.monitor_mode
    "log_every": 0,  # >0: a metrics.jsonl line every N optimizer steps
    "init_weights": None,  # checkpoint to start from (fine-tuning)
    "init_missing_ok": [],  # parameters init_weights may lack (new modules): globs / module prefixes
    "schedule_unit": "epoch",  # epoch | step: when the LR schedule advances
    "warmup_steps": 0,  # linear warm-up (per-step schedules)
    "warmup_epochs": 0,  # linear warm-up (per-epoch cosine)
    "lr_by_module": None,  # {module prefix: lr}
    "checkpoint_trainable_only": False,  # checkpoints hold only the trainable parameters
    # a stop (cancel, time budget) in the middle of an epoch validates the weights trained so far, so the
    # best checkpoint can be the latest (a budget that ends late in a long epoch would else discard it)
    "validate_on_stop": False,
    "ddp_find_unused_parameters": False,
    # read by the methods' datasets / the CLI, by convention
    "data_root": None,
    "val_root": None,
    "val_batch_size": None,
    "checkpoint": None,
}

EventCallback = Callable[[Dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metric: float
    history: List[Dict[str, Any]] = field(default_factory=list)
    stopped: Optional[str] = None  # None (all epochs), "early_stopping" or "cancelled"


# ----------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(seed) * 100_003 + int(epoch)


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
            if isinstance(v, (list, tuple)):
                return len(v)
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return 1


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _oom_error(cfg: Mapping[str, Any], where: str) -> TrainingError:
    bs = int(cfg["batch_size"])
    accum = int(cfg.get("grad_accum", 1))
    return TrainingError(
        f"out of GPU memory {where} with batch_size={bs}. Lower the memory use: "
        f"--set batch_size={max(1, bs // 2)} --set grad_accum={accum * 2} keeps the effective batch size; "
        "--set precision=bf16 halves activations; a smaller input size or model also helps."
    )


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def set_train_mode(model: torch.nn.Module) -> torch.nn.Module:
    """``model.train()``, except that modules whose parameters are all frozen
    stay in eval mode (no dropout, no batch-norm statistics updates): a
    frozen image encoder computes the same features as at inference."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
    return model


def _resolve_weights(name_or_path: Any) -> Path:
    """A checkpoint path, or a name registered in the weights registry."""
    path = Path(str(name_or_path))
    if path.is_file():
        return path
    try:
        from ..weights import resolve_weights
    except ImportError:
        raise WeightsError(f"init_weights: checkpoint not found: {path}") from None
    return resolve_weights(str(name_or_path))


def _improved(value: float, best: Optional[float], mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _safe_len(ds: Any, what: str) -> int:
    try:
        return len(ds)
    except TypeError:
        raise DatasetError(f"the {what} dataset has no length; the trainer needs a map-style dataset") from None


# ------------------------------------------------------------------ config
def resolve_config(spec: MethodSpec, config: Optional[Mapping[str, Any]],
                   base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Trainer defaults < method defaults < ``base`` (a resumed run's saved
    config) < user config; fills monitor. The user's keys and value types are
    checked against the defaults (a typo is an error, not ignored)."""
    defaults = merge_config(TRAINER_DEFAULTS, spec.default_config)
    config = check_config(config, defaults, what=f"{spec.name} config")
    cfg = merge_config(defaults, base, config)
    cfg["monitor"] = cfg.get("monitor") or spec.monitor
    cfg["monitor_mode"] = cfg.get("monitor_mode") or spec.monitor_mode
    if cfg["monitor_mode"] not in ("min", "max"):
        raise ConfigError(f"monitor_mode must be 'min' or 'max', got {cfg['monitor_mode']!r}")
    for key in ("epochs", "batch_size", "grad_accum"):
        try:
            cfg[key] = int(cfg[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {cfg[key]!r}") from None
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {cfg[key]}")
    try:
        cfg["lr"] = float(cfg["lr"])
    except (TypeError, ValueError):
        raise ConfigError(f"lr must be a number, got {cfg['lr']!r}") from None
    return cfg


# -------------------------------------------------------------------- train
def _write_run_provenance(metrics_path: Path, method: str, cfg: Mapping[str, Any]) -> None:
    """``metrics.jsonl.provenance.json``: what the curves come from (method,
    variant, starting weights and their hash, data folders, settings, version)."""
    from ..provenance import build_provenance, checkpoint_identity, folder_fingerprint, write_sidecar

    start = next((cfg.get(k) for k in ("init_weights", "init_checkpoint", "checkpoint", "sam2_checkpoint")
                  if isinstance(cfg.get(k), str) and cfg.get(k)), None)
    write_sidecar(metrics_path, build_provenance(
        result="training curves", model=checkpoint_identity(method, start, cfg.get("variant")),
        options=plain_config(cfg), data=folder_fingerprint(cfg.get("data_root")),
        val_data=folder_fingerprint(cfg.get("val_root"))), stamp=False)  # the log grows: no size stamp


def train(
    method: Union[str, MethodSpec],
    config: Optional[Mapping[str, Any]] = None,
    *,
    run_dir: Union[str, Path],
    resume: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    on_event: Optional[EventCallback] = None,
) -> TrainResult:
    """Train ``method`` with ``config``; logs and checkpoints go to ``run_dir``.

    ``resume=True`` continues from ``run_dir/checkpoints/last.pt`` (the
    stored config is used, with ``config`` on top). ``cancel`` stops after
    the current optimizer step with a checkpoint (``TrainResult.stopped ==
    "cancelled"``); ``on_event`` receives dicts (``type``: start, step,
    epoch, checkpoint, done) for live plots.
    """
    spec = get_method(method) if isinstance(method, str) else method
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"

    resume_ckpt = None
    if resume:
        if not last_path.is_file():
            raise TrainingError(f"cannot resume: no checkpoint at {last_path} (start without --resume)")
        resume_ckpt = load_checkpoint(last_path)
        if resume_ckpt.get("method") not in (None, spec.name):
            raise TrainingError(
                f"cannot resume: {last_path} was written by method {resume_ckpt.get('method')!r}, not {spec.name!r}"
            )
        cfg = resolve_config(spec, config, base=resume_ckpt.get("config"))
    else:
        cfg = resolve_config(spec, config)

    device = resolve_device(cfg["device"], local_rank=0)
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.gpu_index)
    amp_dtype = resolve_dtype(cfg["precision"], device)
    main = dist_info.is_main
    logger = RunLogger(run_dir, enabled=main)

    def emit(event: Dict[str, Any]) -> None:
        if main and on_event is not None:
            on_event(event)

    try:
        return _train_loop(
            spec, cfg, run_dir, ckpt_dir, last_path, best_path, resume_ckpt, device, amp_dtype,
            dist_info, logger, emit, progress, cancel,
        )
    finally:
        logger.close()
        shutdown_distributed(dist_info)


def _train_loop(
    spec, cfg, run_dir, ckpt_dir, last_path, best_path, resume_ckpt, device, amp_dtype,
    dist_info: DistInfo, logger: RunLogger, emit, progress, cancel,
) -> TrainResult:
    main = dist_info.is_main
    seed = int(cfg["seed"])
    seed_everything(seed)

    # --- data (stage messages: the first batch can be a minute away)
    report(progress, 0, None, "loading the dataset")
    train_ds, val_ds = spec.build_datasets(cfg)
    if train_ds is None or _safe_len(train_ds, "training") == 0:
        where = cfg.get("data_root") or cfg.get("data") or "the configured data"
        raise DatasetError(f"the training dataset is empty ({where}); add image/mask pairs first")
    if val_ds is not None and _safe_len(val_ds, "validation") == 0:
        val_ds = None
    if val_ds is None and str(cfg["monitor"]).startswith("val_"):
        # No validation set: select, schedule and stop early on the training loss.
        log.warning("no validation data: monitoring train_loss instead of %s", cfg["monitor"])
        cfg["monitor"], cfg["monitor_mode"] = "train_loss", "min"
    bs = int(cfg["batch_size"])
    accum = int(cfg["grad_accum"])
    world, rank = dist_info.world_size, dist_info.rank
    train_sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    batches_per_epoch = math.ceil(len(train_sampler) / bs)

    # --- model and optimiser
    report(progress, 0, None, f"building the {spec.name} model")
    model = spec.build_model(cfg)
    if cfg.get("init_weights") and resume_ckpt is None:
        report(progress, 0, None, f"loading the weights {cfg['init_weights']}")
        load_model_weights(_resolve_weights(cfg["init_weights"]), model, missing_ok=list(cfg.get("init_missing_ok") or ()))
    model.to(device)
    method_groups = spec.param_groups(model, cfg) if spec.param_groups else None
    groups = build_param_groups(model, cfg, method_groups, layer_id=getattr(spec, "layer_id", None))
    optimizer = build_optimizer(groups, cfg)
    stepwise = per_step(cfg)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=steps_per_epoch)
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.get("ddp_find_unused_parameters", False)),
        )

    # --- state
    start_epoch, global_step, skip_batches = 0, 0, 0
    best_metric: Optional[float] = None
    bad_epochs = 0
    history: List[Dict[str, Any]] = []
    partial = {"loss_sum": 0.0, "count": 0.0}
    rng_mid_epoch = None
    if resume_ckpt is not None:
        try:
            if resume_ckpt.get("trainable_only"):
                load_model_weights(last_path, _unwrap(model), ckpt=resume_ckpt)
            else:
                _unwrap(model).load_state_dict(resume_ckpt["model"])
            optimizer.load_state_dict(resume_ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise WeightsError(f"cannot resume from {last_path}: it does not match this model/config ({exc})") from None
        if scheduler is not None and resume_ckpt.get("scheduler"):
            scheduler.load_state_dict(resume_ckpt["scheduler"])
        start_epoch = int(resume_ckpt["epoch"])
        global_step = int(resume_ckpt["step"])
        tstate = resume_ckpt.get("trainer", {})
        best_metric = tstate.get("best_metric")
        bad_epochs = int(tstate.get("bad_epochs", 0))
        skip_batches = int(tstate.get("batch_in_epoch", 0))
        partial = dict(tstate.get("partial", partial))
        if skip_batches:
            rng_mid_epoch = resume_ckpt.get("rng")
        history = [r for r in read_metrics(logger.metrics_path) if r.get("epoch", 0) < start_epoch] if main else []
        logger.truncate_after(start_epoch, global_step)
        log.info("resuming %s from %s at epoch %d step %d", spec.name, last_path, start_epoch, global_step)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir / "config.yaml", {**cfg, "method": spec.name})
        _write_run_provenance(logger.metrics_path, spec.name, cfg)

    monitor, mode = cfg["monitor"], cfg["monitor_mode"]
    epochs = int(cfg["epochs"])
    total_batches = epochs * batches_per_epoch
    emit({"type": "start", "epochs": epochs, "batches_per_epoch": batches_per_epoch, "start_epoch": start_epoch,
          "method": spec.name, "run_dir": str(run_dir), "monitor": monitor})

    def checkpoint(path: Path, epoch: int, batch_in_epoch: int, metrics: Mapping[str, Any]) -> None:
        if not main:
            return
        state, extra = model_state_for_checkpoint(_unwrap(model), bool(cfg.get("checkpoint_trainable_only")))
        try:
            _save(path, epoch, batch_in_epoch, metrics, state, extra)
        except WriteError as exc:  # a full disk: the previous checkpoint stays whole and resumable
            kept = (f"the last good checkpoint is kept: {last_path}" if last_path.is_file()
                    else "no checkpoint had been written yet")
            raise WriteError(f"training stopped: {exc}; {kept}; continue with --resume "
                             f"once there is space") from exc
        emit({"type": "checkpoint", "path": str(path), "epoch": epoch, "step": global_step})

    def _save(path: Path, epoch: int, batch_in_epoch: int, metrics: Mapping[str, Any], state, extra) -> None:
        save_checkpoint(path, {
            **extra,
            "model": state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,  # epochs completed: training continues with this epoch
            "step": global_step,
            "rng": capture_rng_state(),
            "config": plain_config(cfg),
            "method": spec.name,
            "metrics": plain_config(metrics),
            "surgseg_version": __version__,
            "trainer": {
                "best_metric": best_metric,
                "bad_epochs": bad_epochs,
                "batch_in_epoch": batch_in_epoch,
                "partial": dict(partial),
                "world_size": dist_info.world_size,
            },
        })

    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype))
        if amp_dtype is not None else contextlib.nullcontext
    )
    grad_clip = cfg.get("grad_clip")
    log_every = int(cfg.get("log_every") or 0)
    patience = int(cfg.get("early_stopping_patience") or 0)
    collate = spec.collate_fn
    stopped: Optional[str] = None
    last_metrics: Dict[str, Any] = {}

    for epoch in range(start_epoch, epochs):
        t0 = time.monotonic()
        report(progress, epoch * batches_per_epoch + skip_batches, total_batches, f"epoch {epoch + 1}/{epochs}")
        seed_everything(_epoch_seed(seed, epoch))
        train_sampler.set_epoch(epoch)
        indices = list(train_sampler)[skip_batches * bs:]
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        loader = DataLoader(
            train_ds, batch_size=bs, sampler=indices, collate_fn=collate, num_workers=int(cfg["num_workers"]),
            generator=torch.Generator().manual_seed(_epoch_seed(seed, epoch)), pin_memory=device.type == "cuda",
        )
        if rng_mid_epoch is not None:  # resumed after a Stop in the middle of this epoch
            restore_rng_state(rng_mid_epoch)
            rng_mid_epoch = None
        else:
            partial = {"loss_sum": 0.0, "count": 0.0}
        set_train_mode(model)
        optimizer.zero_grad(set_to_none=True)
        n_local = len(loader)
        batch_idx = skip_batches
        for i, batch in enumerate(loader):
            batch_idx = skip_batches + i
            step_now = (i + 1) % accum == 0 or i + 1 == n_local
            batch = to_device(batch, device)
            n = _batch_size(batch)
            sync = contextlib.nullcontext() if (step_now or not dist_info.enabled) else model.no_sync()
            try:
                with sync:
                    with autocast():
                        outputs = spec.forward(model, batch)
                        loss = spec.loss(outputs, batch, cfg)
                    bad = not bool(torch.isfinite(loss.detach()).all())
                    bad = broadcast_flag(bad, dist_info, device)
                    if bad:
                        raise _nan_error(loss, epoch, global_step, batch_idx, last_path, cfg)
                    (loss.float() / accum).backward()
                if step_now:
                    if grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    global_step += 1
                    if stepwise and scheduler is not None:
                        scheduler.step()
            except TrainingError:
                raise
            except Exception as exc:
                if _is_oom(exc):
                    raise _oom_error(cfg, f"at epoch {epoch} step {global_step}") from None
                raise
            loss_value = float(loss.detach())
            partial["loss_sum"] += loss_value * n
            partial["count"] += n
            report(progress, epoch * batches_per_epoch + batch_idx + 1, total_batches,
                   f"epoch {epoch + 1}/{epochs} loss {loss_value:.4g}")
            if step_now:
                lr_now = optimizer.param_groups[0]["lr"]
                emit({"type": "step", "epoch": epoch, "step": global_step, "loss": loss_value, "lr": lr_now})
                if log_every and global_step % log_every == 0:
                    logger.write({"type": "step", "epoch": epoch, "step": global_step, "loss": loss_value,
                                  "lr": lr_now})
                want_stop = broadcast_flag(bool(cancel is not None and cancel.cancelled), dist_info, device)
                if want_stop and not (i + 1 == n_local):
                    checkpoint(last_path, epoch, batch_idx + 1, last_metrics)
                    stopped = "cancelled"
                    break
        if stopped and not (cfg["validate_on_stop"] and val_ds is not None and partial["count"]):
            break
        skip_batches = 0

        # --- validation and bookkeeping (all ranks take part in reductions)
        train_loss = reduce_weighted({"train_loss": partial["loss_sum"]}, partial["count"], dist_info, device)
        record: Dict[str, Any] = {"type": "epoch", "epoch": epoch, "step": global_step, **train_loss,
                                  "lr": optimizer.param_groups[0]["lr"]}
        if stopped:  # validate_on_stop: the weights of a stop in the middle of this epoch
            record["partial_epoch"] = True
            rng_at_stop, metrics_at_stop = capture_rng_state(), last_metrics
        if val_ds is not None:
            record.update(_validate(spec, model, val_ds, cfg, device, autocast, dist_info, collate))
        record["time_s"] = round(time.monotonic() - t0, 3)
        monitor_key = monitor
        if monitor_key not in record:
            raise TrainingError(
                f"monitor metric {monitor!r} is not produced by method {spec.name!r}; "
                f"available: {', '.join(k for k in record if k not in ('type', 'epoch', 'step'))}"
            )
        value = float(record[monitor_key])
        if stopped:
            pass  # a partial epoch: the schedule does not advance (a resumed run finishes the epoch)
        elif isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        elif scheduler is not None and not stepwise:
            scheduler.step()
        improved = _improved(value, best_metric, mode)
        if improved:
            best_metric = value
            bad_epochs = 0
        elif not stopped:
            bad_epochs += 1
        record["monitor"] = monitor_key
        record["best"] = bool(improved)
        history.append(record)
        last_metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        logger.write(record)
        emit(dict(record))
        # best.pt first: if killed between the two writes, last.pt still
        # points one epoch back and the resumed run redoes this epoch.
        if stopped:  # partial epoch: best.pt and last.pt keep the position to resume from
            if improved:
                checkpoint(best_path, epoch, batch_idx + 1, last_metrics)
                # last.pt again, with the RNG of the stop (a resumed run continues exactly) and the new best
                restore_rng_state(rng_at_stop)
                checkpoint(last_path, epoch, batch_idx + 1, metrics_at_stop)
            barrier(dist_info)
            break
        if improved:
            checkpoint(best_path, epoch + 1, 0, last_metrics)
        checkpoint(last_path, epoch + 1, 0, last_metrics)
        barrier(dist_info)
        if patience and bad_epochs >= patience:
            stopped = "early_stopping"
            log.info("early stopping after epoch %d: %s did not improve for %d epochs", epoch, monitor_key, patience)
            break
        if cancel is not None and broadcast_flag(cancel.cancelled, dist_info, device):
            stopped = "cancelled"
            break

    barrier(dist_info)
    emit({"type": "done", "stopped": stopped, "best_metric": best_metric, "last_checkpoint": str(last_path),
          "best_checkpoint": str(best_path if best_path.is_file() else last_path)})
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best_path if best_path.is_file() else last_path,
        last_checkpoint=last_path,
        best_metric=float(best_metric) if best_metric is not None else float("nan"),
        history=history,
        stopped=stopped,
    )


def _nan_error(loss, epoch, global_step, batch_idx, last_path: Path, cfg) -> TrainingError:
    kept = (
        f"the last good checkpoint is kept: {last_path}" if last_path.is_file()
        else "no checkpoint had been written yet"
    )
    value = "nan" if bool(torch.isnan(loss.detach()).any()) else "inf"
    return TrainingError(
        f"loss became {value} at epoch {epoch}, optimizer step {global_step + 1} (batch {batch_idx} of the epoch); "
        f"training stopped and {kept}. Try a lower lr (now {cfg['lr']:g}), --set grad_clip=1.0, "
        "or check the data for empty/broken masks."
    )


@torch.no_grad()
def _validate(spec, model, val_ds, cfg, device, autocast, dist_info: DistInfo, collate) -> Dict[str, float]:
    model.eval()
    sampler = DistributedSampler(val_ds, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=False)
    loader = DataLoader(val_ds, batch_size=int(cfg.get("val_batch_size") or cfg["batch_size"]), sampler=sampler,
                        collate_fn=collate, num_workers=int(cfg["num_workers"]))
    sums: Dict[str, float] = {}
    count = 0.0
    for batch in loader:
        batch = to_device(batch, device)
        n = _batch_size(batch)
        try:
            with autocast():
                outputs = spec.forward(model, batch)
                loss = spec.loss(outputs, batch, cfg)
                metrics = dict(spec.metrics(outputs, batch, cfg))
        except Exception as exc:
            if _is_oom(exc):
                raise _oom_error(cfg, "during validation") from None
            raise
        metrics["val_loss"] = float(loss.detach().float())
        for k, v in metrics.items():
            key = k if k.startswith("val_") else f"val_{k}"
            sums[key] = sums.get(key, 0.0) + float(v) * n
        count += n
    set_train_mode(model)
    if not sums:
        return {}
    return reduce_weighted(sums, count, dist_info, device)


__all__ = ["train", "TrainResult", "TRAINER_DEFAULTS", "resolve_config", "resolve_device", "resolve_dtype",
           "set_train_mode", "Cancelled"]
