"""Crash-safe checkpoints: safetensors + JSON only, written to a temporary folder and renamed, with checksums.

A checkpoint is a folder ``step_00000123/`` holding ``model.safetensors``, ``optimizer.safetensors`` (every tensor of
the optimiser state, flattened), ``state.json`` (step, scheduler, non-tensor optimiser state, metrics, config) and
``checksums.json`` (sha256 of each file). It only ever appears complete: a crash mid-write leaves a ``.tmp-*``
folder that is ignored (and cleaned) on the next start. Loading never unpickles anything.

Under DeepSpeed the optimizer partitions and fp32 master weights are in DeepSpeed's own format (``torch.save``,
a pickle) in ``{run}/ds_checkpoints/<tag>/``: :func:`save_deepspeed_state` returns a manifest (SHA-256 of every file)
that goes into the kit's checkpoint of the same step, and :func:`load_deepspeed_state` lets DeepSpeed read the
folder only after every file matches it and loads under torch's ``weights_only`` unpickler (tensors, containers and
DeepSpeed's plain config classes, no code).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from mosaic_core.io import sha256_file

log = logging.getLogger(__name__)
PREFIX = "step_"
DS_DIR = "ds_checkpoints"  # DeepSpeed's own checkpoints beside ``checkpoints/``, one tag per kit checkpoint

# Test hook: called with (stage, path) while writing; lets tests pause or crash the writer mid-file.
WRITE_HOOK: Callable[[str, Path], None] | None = None


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the folder and the reason."""


_hook_seen: dict[str, int] = {}


def _hook(stage: str, path: Path) -> None:
    """Test hook. ``MOSAIC_ALM_CKPT_PAUSE=<stage>`` pauses the writer (after writing ``<path>.paused``) the
    ``MOSAIC_ALM_CKPT_PAUSE_SKIP``+1-th time this process reaches ``stage``, so a test can SIGKILL it mid-write."""
    if WRITE_HOOK is not None:
        WRITE_HOOK(stage, path)
    elif os.environ.get("MOSAIC_ALM_CKPT_PAUSE") == stage:  # used by the kill-during-save test
        seen = _hook_seen[stage] = _hook_seen.get(stage, 0) + 1
        if seen <= int(os.environ.get("MOSAIC_ALM_CKPT_PAUSE_SKIP", "0")):
            return
        marker = path / "writer.paused" if path.is_dir() else Path(str(path) + ".paused")
        marker.write_text("paused")
        import time

        time.sleep(3600)


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """safetensors bytes written in chunks (the ``mid-<name>`` hook fires with half the file on disk)."""
    from safetensors.torch import save

    data = save(tensors)
    half = len(data) // 2
    with open(path, "wb") as f:
        f.write(data[:half])
        f.flush()
        _hook(f"mid-{name}", path)
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())


def flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        rest["state"][str(pid)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
                rest["state"][str(pid)][key] = {"__tensor__": f"{pid}.{key}"}
            else:
                rest["state"][str(pid)][key] = value
    return tensors, rest


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state = {}
    for pid, entry in rest["state"].items():
        state[int(pid)] = {k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
                           for k, v in entry.items()}
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    state: dict, keep_last: int = 3) -> Path:
    """Write ``{name}.safetensors`` for each entry of ``tensors`` plus ``state.json`` atomically.

    Raises :class:`CheckpointError` (the previous checkpoints untouched) if the disk is full or unwritable.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{step:08d}-", dir=ckpt_dir))
    try:
        sums = {}
        for name, tdict in tensors.items():
            path = tmp / f"{name}.safetensors"
            _hook(f"before-{name}", path)
            _write_safetensors({k: v.detach().cpu().contiguous() for k, v in tdict.items()}, path, name)
            sums[path.name] = sha256_file(path)
        spath = tmp / "state.json"
        spath.write_text(json.dumps(state, indent=1, default=_json_default))
        sums[spath.name] = sha256_file(spath)
        _hook("before-checksums", tmp)
        (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _hook("before-rename", tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {exc.strerror or exc} "
                              f"(previous checkpoints are intact)") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(ckpt_dir, keep_last, newest=final)
    return final


def _json_default(obj):
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def verify(path: Path) -> str | None:
    """None if the checkpoint folder is complete and its checksums match, else the reason it is not."""
    sums_path = path / "checksums.json"
    if not sums_path.is_file():
        return "no checksums.json (incomplete write)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return "checksums.json is corrupt"
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if sha256_file(f) != digest:
            return f"{name} does not match its checksum"
    return None


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that verifies; partial or corrupt ones are skipped with a warning."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for junk in ckpt_dir.glob(f".tmp-{PREFIX}*"):
            log.warning("removing partial checkpoint %s left by an interrupted write", junk)
            if junk.is_dir():
                shutil.rmtree(junk, ignore_errors=True)
            else:
                junk.unlink(missing_ok=True)
    for path in reversed(list_checkpoints(ckpt_dir)):
        reason = verify(path)
        if reason is None:
            return path
        log.warning("ignoring checkpoint %s: %s", path, reason)
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a verified checkpoint folder: ({name: tensors}, state). Only safetensors and JSON are read."""
    path = Path(path)
    reason = verify(path)
    if reason is not None:
        raise CheckpointError(f"checkpoint {path} is not usable: {reason}")
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        try:
            tensors[f.stem] = load_file(str(f))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint {f} is not a valid safetensors file: {exc}") from None
    return tensors, json.loads((path / "state.json").read_text())


def prune(ckpt_dir: Path, keep_last: int, newest: Path | None = None) -> None:
    """Keep the ``keep_last`` newest checkpoints up to ``newest`` (the one just written); older ones go. Folders
    after ``newest`` (left by a run that was rolled back, or corrupt) never push a good checkpoint out."""
    if keep_last <= 0:
        return
    ckpts = list_checkpoints(ckpt_dir)
    if newest is not None:
        ckpts = [p for p in ckpts if p.name <= newest.name]
    for old in ckpts[:-keep_last]:
        # rename first: a kill during the delete leaves a .tmp- folder (removed at the next start), never a
        # step_* folder with files missing
        doomed = old.with_name(f".tmp-{old.name}-pruned")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def safe_torch_load(path: str | os.PathLike):
    """The only ``torch.load`` in the kit: ``weights_only=True``; a pickle with code raises CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"refusing to load {path}: not a plain tensor file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def require_safetensors(path: str | os.PathLike, what: str) -> Path:
    """``path`` must be a safetensors file. A missing file (next to pickle weights or not), a pickle / ``torch.save``
    file or any other bytes raise CheckpointError naming ``what`` and the file. Only the header is read."""
    path = Path(path)
    if not path.is_file():
        pickles = sorted(p.name for p in path.parent.glob("*") if p.suffix in _PICKLE_SUFFIXES)
        extra = f" (it holds {', '.join(pickles)}: pickle weights, which the kit never loads)" if pickles else ""
        raise CheckpointError(f"{what}: no {path.name} in {path.parent}{extra}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if 0 < n <= size - 8 and head[8:9] == b"{":
        return path
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        kind = "a pickle (torch.save) file"
    else:
        kind = "not a safetensors file (bad header)"
    raise CheckpointError(f"{what}: {path} is {kind}; mosaic-alm loads safetensors only and never unpickles weights "
                          "(convert it with safetensors.torch.save_file)")


# ---------------------------------------------------------------------------------------- DeepSpeed's own state
def _deepspeed_safe_globals() -> list:
    """The non-tensor classes DeepSpeed's checkpoint files hold (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on ZeRO-2 and ZeRO-3 checkpoints): plain data, no code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def save_deepspeed_state(engine, run: str | os.PathLike, tag: str, exclude_frozen: bool = False) -> dict | None:
    """Collective (every rank). ``engine.save_checkpoint`` into ``{run}/ds_checkpoints/{tag}`` (optimizer partitions,
    fp32 master weights, DeepSpeed's counters; ``exclude_frozen`` leaves frozen weights out); rank 0 returns the
    manifest ``{"tag", "sha256": {file: digest}}`` to keep in the kit's checkpoint state (other ranks: None). Every
    rank's files must be visible to rank 0 (shared storage, as DeepSpeed assumes)."""
    folder = Path(run) / DS_DIR / tag
    engine.save_checkpoint(str(folder.parent), tag=tag, exclude_frozen_parameters=exclude_frozen)  # ends in a barrier
    if engine.global_rank != 0:
        return None
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return {"tag": tag, "sha256": {f.relative_to(folder).as_posix(): sha256_file(f) for f in files}}


def verify_deepspeed_state(run: str | os.PathLike, record: dict | None) -> Path:
    """The DeepSpeed folder of a kit checkpoint, after checking it against the manifest ``record`` (the same files,
    the same bytes) and loading every file with torch's ``weights_only`` unpickler (DeepSpeed's plain classes
    allowed): a file with any other global, i.e. code, is refused. Raises CheckpointError naming the file."""
    if not record or "tag" not in record or "sha256" not in record:
        raise CheckpointError(f"{Path(run) / 'checkpoints'}: the checkpoint has no manifest of its DeepSpeed state "
                              f"(written by an older mosaic-alm?); the kit loads no DeepSpeed files it cannot check: "
                              f"move {Path(run) / DS_DIR} and {Path(run) / 'checkpoints'} aside to start fresh")
    folder = Path(run) / DS_DIR / record["tag"]
    on_disk = {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}
    want = record["sha256"]
    if set(on_disk) != set(want):
        raise CheckpointError(f"DeepSpeed checkpoint {folder} does not match its manifest: missing "
                              f"{sorted(set(want) - set(on_disk))}, unexpected {sorted(set(on_disk) - set(want))}")
    for rel, f in on_disk.items():
        if sha256_file(f) != want[rel]:
            raise CheckpointError(f"DeepSpeed checkpoint file {f} does not match its checksum (modified after the "
                                  "kit wrote it); refusing to load it")
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        for f in on_disk.values():
            safe_torch_load(f)
    return folder


def load_deepspeed_state(engine, run: str | os.PathLike, record: dict | None, **load_kw) -> None:
    """Collective. Verify (:func:`verify_deepspeed_state`), then ``engine.load_checkpoint`` the tag (the caller's
    scheduler keeps its own state: ``load_lr_scheduler_states=False``)."""
    folder = verify_deepspeed_state(run, record)
    engine.load_checkpoint(str(folder.parent), tag=record["tag"], load_lr_scheduler_states=False, **load_kw)


def prune_deepspeed_states(run: str | os.PathLike) -> None:
    """Delete the DeepSpeed tags of ``{run}/ds_checkpoints`` that no kit checkpoint in ``{run}/checkpoints`` names
    (pruned ones, and any left by a kill between the two writes); rank 0, after the kit checkpoint is written."""
    keep = {p.name for p in list_checkpoints(Path(run) / "checkpoints")}
    for junk in (Path(run) / DS_DIR).glob(f".tmp-{PREFIX}*"):  # a kill during an earlier prune
        shutil.rmtree(junk, ignore_errors=True)
    for old in list_checkpoints(Path(run) / DS_DIR):
        if old.name not in keep:
            doomed = old.with_name(f".tmp-{old.name}-pruned")
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
