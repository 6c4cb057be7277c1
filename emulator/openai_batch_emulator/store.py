"""The emulator's state: files and batches, with the batch lifecycle computed lazily from timestamps.

Nothing runs in the background: a batch's status is derived from its timestamps when it is read, so
holding 10,000 idle batches costs only their dicts. With ``data_dir`` every change is written to disk
(metadata as JSON, file contents as files) so a restarted emulator loses nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openai_batch_emulator.config import EmulatorConfig
from openai_batch_emulator.contract import (
    InputReport,
    Problem,
    guide,
    judge_input_file,
    parse_requests,
)
from openai_batch_emulator.errors import ApiFailure
from openai_batch_emulator.results import TRANSIENT_STATUSES, expired_line, result_line, transient_line

__all__ = ["ApiFailure", "EmulatorConfig", "Store"]  # EmulatorConfig and ApiFailure are still importable here

#: Statuses a batch never leaves (the emulator's own list: it shares nothing with the client).
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def estimate_input_tokens(requests: list[dict[str, Any]]) -> int:
    """The emulator's own estimate of a file's input tokens: the characters of every string in the request
    bodies (prompts, model names, roles), divided by 4, rounded up. It reads the bodies, not the bytes of the
    lines, so it is independent of any client's estimate, and it is smaller than a bytes-of-the-line one."""

    def chars(value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, dict):
            return sum(chars(v) for v in value.values())
        if isinstance(value, list):
            return sum(chars(v) for v in value)
        return 0

    return (sum(chars(item.get("body")) for item in requests) + 3) // 4


def _fresh_stats() -> dict[str, Any]:
    return {
        "requests": {},
        "faults": {},
        "batches_created": 0,
        "files_created": 0,
        "files_uploaded": 0,
        "requests_completed": 0,  # request lines answered 2xx, over all batches: what the real API bills
        "auth": {},  # azure flavor: requests by credential kind, "api-key" or "bearer"
        "bearer_digests": [],  # azure flavor: short SHA-256 digests of the bearer tokens seen, in order
    }


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class Store:
    """Files and batches, thread-safe, optionally persisted under ``data_dir``."""

    def __init__(self, config: EmulatorConfig, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = config
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._private: dict[str, dict[str, Any]] = {}  # per batch: float timestamps, planned results
        # Files never change, so one verdict per (file, endpoint) serves every batch made from them.
        self._verdicts: dict[tuple[str, str, str], InputReport] = {}
        self.lock = threading.RLock()
        self.stats: dict[str, Any] = _fresh_stats()
        #: How many times a batch has run each ``custom_id`` since the last reset (the transient-failure draw).
        self.attempts: dict[str, int] = {}
        # Stands in for ``config.seed`` when that is None: the transient draw is then seeded from the system.
        self._salt = secrets.token_hex(8)
        self.data_dir = Path(data_dir) if data_dir else None
        if self.data_dir:
            (self.data_dir / "contents").mkdir(parents=True, exist_ok=True)
            self._load()

    # ------------------------------------------------------------------------------------ persistence

    def _load(self) -> None:
        assert self.data_dir is not None
        state_file = self.data_dir / "state.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            self.files, self.batches, self._private = state["files"], state["batches"], state["private"]
            self.stats["batches_created"] = state.get("batches_created", len(self.batches))
            self.stats["requests_completed"] = state.get("requests_completed", 0)
            self.attempts = state.get("attempts", {})
            for file_id in self.files:
                path = self.data_dir / "contents" / file_id
                if path.exists():
                    self.contents[file_id] = path.read_bytes()

    def _save(self) -> None:
        if not self.data_dir:
            return
        state = {
            "files": self.files,
            "batches": self.batches,
            "private": self._private,
            "batches_created": self.stats["batches_created"],
            "requests_completed": self.stats["requests_completed"],
            "attempts": self.attempts,
        }
        tmp = self.data_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.data_dir / "state.json")

    def _save_content(self, file_id: str, data: bytes) -> None:
        if self.data_dir:
            (self.data_dir / "contents" / file_id).write_bytes(data)

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.contents.clear()
            self.batches.clear()
            self._private.clear()
            self._verdicts.clear()
            self.attempts.clear()
            self.stats.update(_fresh_stats())
            if self.data_dir:
                for path in (self.data_dir / "contents").iterdir():
                    path.unlink()
            self._save()

    # ------------------------------------------------------------------------------------------ files

    def add_file(self, data: bytes, filename: str, purpose: str, expires_after: int | None = None) -> dict[str, Any]:
        """Hold a file. ``expires_after`` (seconds from now) sets ``expires_at``; without it an uploaded batch
        input file expires after 30 days, as the spec says, and any other file never does."""
        with self.lock:
            file_id = _new_id("file-")
            created = int(time.time())
            if expires_after is None and purpose == "batch":
                expires_after = guide.BATCH_FILE_TTL_SECONDS
            obj = {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": created,
                "expires_at": created + expires_after if expires_after is not None else None,
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
                "status_details": None,
            }
            self.files[file_id] = obj
            self.contents[file_id] = data
            self.stats["files_created"] += 1
            if purpose != "batch_output":  # uploaded by a client, not written as a batch's results
                self.stats["files_uploaded"] += 1
            self._save_content(file_id, data)
            self._save()
            return obj

    def get_file(self, file_id: str) -> dict[str, Any]:
        obj = self.files.get(file_id)
        if obj is None:
            raise ApiFailure(404, f"No such File object: {file_id}", code=None, param="id")
        return obj

    def delete_file(self, file_id: str) -> dict[str, Any]:
        with self.lock:
            self.get_file(file_id)
            del self.files[file_id]
            self.contents.pop(file_id, None)
            self._verdicts = {key: v for key, v in self._verdicts.items() if key[0] != file_id}
            if self.data_dir:
                (self.data_dir / "contents" / file_id).unlink(missing_ok=True)
            self._save()
        return {"id": file_id, "object": "file", "deleted": True}

    # ---------------------------------------------------------------------------------------- batches

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        output_expires_after: int | None = None,
    ) -> dict[str, Any]:
        """A new batch, ``validating``; the request was judged by the contract before it got here.

        :param output_expires_after: Seconds after which its output and error files expire.
        """
        with self.lock:
            if input_file_id not in self.files:
                raise ApiFailure(
                    400,
                    f"Invalid 'input_file_id': file {input_file_id!r} not found.",
                    param="input_file_id",
                    code="invalid_value",
                )
            now = time.time()
            batch_id = _new_id("batch_")
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": endpoint,
                "model": None,
                "errors": None,
                "input_file_id": input_file_id,
                "completion_window": completion_window,
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(now),
                "in_progress_at": None,
                "expires_at": int(now + 86_400),
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "usage": None,
                "metadata": metadata,
            }
            self.batches[batch_id] = batch
            self._private[batch_id] = {
                "t0": now,
                "cancel_at": None,
                "done_fraction": 0.0,
                "output_expires_after": output_expires_after,
                # Fixed when the batch is created, as the setting says: a later change leaves it alone.
                "expire_after_fraction": self.config.expire_after_fraction,
                "flavor": self.config.flavor,  # whose line rules judge its input
            }
            self.stats["batches_created"] += 1
            self._save()
            return batch

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                raise ApiFailure(404, f"No batch found with id '{batch_id}'.", code="not_found", param="batch_id")
            self._advance(batch)
            return batch

    def list_batches(self, after: str | None, limit: int) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self.batches.values(), key=lambda b: (self._private[b["id"]]["t0"], b["id"]), reverse=True)
            start = 0
            if after is not None:
                ids = [b["id"] for b in ordered]
                start = ids.index(after) + 1 if after in ids else len(ids)
            page = ordered[start : start + limit]
            for batch in page:
                self._advance(batch)
            return {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": start + limit < len(ordered),
            }

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            batch = self.get_batch(batch_id)
            if batch["status"] in TERMINAL:
                raise ApiFailure(
                    409, f"Cannot cancel a batch with status '{batch['status']}'.", code="batch_not_cancellable"
                )
            if batch["status"] != "cancelling":
                now = time.time()
                private = self._private[batch_id]
                private["cancel_at"] = now
                private["done_fraction"] = self._progress(batch, now)
                batch["status"] = "cancelling"
                batch["cancelling_at"] = int(now)
                self._save()
            return batch

    def force_status(self, batch_id: str, status: str) -> dict[str, Any]:
        """Admin: put a batch into ``status`` now, with the timestamps and files that status implies."""
        with self.lock:
            batch = self.get_batch(batch_id)
            now = time.time()
            private = self._private[batch_id]
            private["forced"] = status
            if status in ("completed", "cancelled", "expired"):
                fraction = 1.0 if status == "completed" else max(0.5, self._progress(batch, now))
                cap = None if status == "completed" else private.get("expire_after_fraction")
                self._finish(batch, status, now, fraction, cap)
            elif status == "failed":
                private["ended_at"] = now
                batch.update(
                    status="failed",
                    failed_at=int(now),
                    errors={
                        "object": "list",
                        "data": [
                            {
                                "code": "forced_failure",
                                "message": "Failed by the emulator's admin API.",
                                "param": None,
                                "line": None,
                            }
                        ],
                    },
                )
            else:
                batch["status"] = status
                stamp = {
                    "in_progress": "in_progress_at",
                    "finalizing": "finalizing_at",
                    "cancelling": "cancelling_at",
                }.get(status)
                if stamp:
                    batch[stamp] = int(now)
            self._save()
            return batch

    # -------------------------------------------------------------------------------------- lifecycle

    def _requests(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return parse_requests(self.contents.get(batch["input_file_id"], b""))

    def _progress(self, batch: dict[str, Any], now: float) -> float:
        private = self._private[batch["id"]]
        start = private["t0"] + self.config.phase_seconds
        if now <= start:
            return 0.0
        return min(1.0, (now - start) / max(self.config.phase_seconds, 1e-6))

    def _advance(self, batch: dict[str, Any]) -> None:
        if batch["status"] in TERMINAL:
            return
        private = self._private[batch["id"]]
        if "forced" in private:
            return
        now = time.time()
        phase = self.config.phase_seconds
        t0 = private["t0"]
        planned = private.get("expire_after_fraction")
        if private["cancel_at"] is not None:
            if now >= private["cancel_at"] + phase:
                self._finish(batch, "cancelled", private["cancel_at"] + phase, private["done_fraction"], planned)
            return
        window = self.config.completion_window_seconds
        if window < 3 * phase and now >= t0 + window:
            self._finish(batch, "expired", t0 + window, self._progress(batch, t0 + window), planned)
            return
        if now >= t0 + phase and batch["in_progress_at"] is None and batch["status"] == "validating":
            report = self._validate(batch)
            if report.problems:
                batch.update(
                    status="failed",
                    failed_at=int(t0 + phase),
                    errors={"object": "list", "data": [p.as_error() for p in report.problems]},
                )
                self._save()
                return
            refusal = self._over_token_limit(batch)
            if refusal is not None:
                batch.update(
                    status="failed",
                    failed_at=int(t0 + phase),
                    errors={
                        "object": "list",
                        "data": [{"code": "token_limit_exceeded", "message": refusal, "param": None, "line": None}],
                    },
                )
                self._save()
                return
            private["admitted"] = True
            batch["status"] = "in_progress"
            batch["in_progress_at"] = int(t0 + phase)
            batch["request_counts"]["total"] = report.requests
        if batch["status"] == "in_progress":
            total = batch["request_counts"]["total"]
            batch["request_counts"]["completed"] = _done_count(total, self._progress(batch, now), planned, int)
            if planned is not None and now >= t0 + 2 * phase:
                # The planned expiry: the window ends when in_progress would, with only part of the work done.
                self._finish(batch, "expired", t0 + 2 * phase, 1.0, planned)
                return
            if now >= t0 + 2 * phase:
                batch["status"] = "finalizing"
                batch["finalizing_at"] = int(t0 + 2 * phase)
        if batch["status"] == "finalizing" and now >= t0 + 3 * phase:
            self._finish(batch, "completed", t0 + 3 * phase, 1.0)

    def _validate(self, batch: dict[str, Any]) -> InputReport:
        file_id = batch["input_file_id"]
        source = self.files.get(file_id)
        if source is None:
            return InputReport([Problem(None, "file_not_found", "The input file was deleted.", "input_file_id")])
        if source["purpose"] != "batch":
            message = f"The input file has purpose {source['purpose']!r}; upload it with purpose 'batch'."
            return InputReport([Problem(None, "invalid_file_purpose", message, "input_file_id")])
        flavor = self._private[batch["id"]].get("flavor", "openai")
        key = (file_id, batch["endpoint"], flavor)
        if key not in self._verdicts:
            self._verdicts[key] = judge_input_file(self.contents.get(file_id, b""), batch["endpoint"], flavor)
        return self._verdicts[key]

    def _over_token_limit(self, batch: dict[str, Any]) -> str | None:
        """The refusal message when admitting ``batch`` would exceed the enqueued-token limit, else ``None``.

        Older batches still validating are admitted (or refused) first, so admission follows creation order
        however the batches happen to be read.
        """
        limit = self.config.enqueued_token_limit
        if limit is None:
            return None
        private = self._private[batch["id"]]
        if "tokens" not in private:
            private["tokens"] = estimate_input_tokens(self._requests(batch))
        # Judged at the instant validation ends, from the other batches' own timestamps, so the verdict does not
        # depend on when a client happens to read the batches.
        at = private["t0"] + self.config.phase_seconds
        enqueued = 0
        for other in list(self.batches.values()):
            if other["id"] == batch["id"]:
                continue
            theirs = self._private[other["id"]]
            if other["status"] == "validating" and theirs["t0"] < private["t0"]:
                self._advance(other)  # only strictly older ones: the recursion ends
            if not theirs.get("admitted"):
                continue
            self._advance(other)
            started = theirs["t0"] + self.config.phase_seconds
            ended = theirs.get("ended_at")
            if started <= at and (ended is None or ended > at):
                enqueued += int(theirs.get("tokens") or 0)
        if private["tokens"] + enqueued <= limit:
            return None
        models = sorted({str((r.get("body") or {}).get("model")) for r in self._requests(batch)}) or ["the model"]
        return (
            f"Enqueued token limit reached for {models[0]} in organization org-emulator. Limit: {limit:,} enqueued "
            f"tokens (this batch: {private['tokens']:,}, already enqueued: {enqueued:,}). Please try again once some "
            "in_progress batches have been completed."
        )

    def _transient_status(self, custom_id: str, attempt: int) -> int | None:
        """The status of a transient failure of ``custom_id``'s ``attempt``-th run (from 1), or ``None``.

        Deterministic given the seed, the ``custom_id`` and the attempt, so a test sees the same failures on
        every run, and a request re-sent in a new batch (a new attempt) gets a new, independent draw.
        """
        cfg = self.config
        if cfg.transient_failure_rate <= 0 and attempt > cfg.transient_failure_attempts:
            return None  # off: no draw, no cost on the common path
        seed = self._salt if cfg.seed is None else cfg.seed
        rng = random.Random(f"{seed}/{custom_id}/{attempt}")
        drawn = rng.random() < cfg.transient_failure_rate
        status = rng.choice(TRANSIENT_STATUSES)
        return status if drawn or attempt <= cfg.transient_failure_attempts else None

    def _finish(
        self, batch: dict[str, Any], status: str, when: float, fraction: float, cap: float | None = None
    ) -> None:
        """End a batch: results for the first ``fraction`` of its requests (at most the first ``cap``, rounded
        down), files, counts and usage."""
        requests = self._requests(batch) if not batch.get("errors") else []
        done = requests[: _done_count(len(requests), fraction, cap, round)]
        ok_lines: list[dict[str, Any]] = []
        error_lines: list[dict[str, Any]] = []
        usage = {"input_tokens": 0, "output_tokens": 0}
        for item in done:
            custom_id = str(item.get("custom_id"))
            attempt = self.attempts[custom_id] = self.attempts.get(custom_id, 0) + 1
            transient = self._transient_status(custom_id, attempt)
            if transient is not None:  # not billed: no tokens
                error_lines.append(transient_line(item, transient, attempt))
                continue
            line, failed, tokens = result_line(batch["endpoint"], item)
            (error_lines if failed else ok_lines).append(line)
            usage["input_tokens"] += tokens[0]
            usage["output_tokens"] += tokens[1]
        self.stats["requests_completed"] += sum(1 for line in ok_lines if 200 <= line["response"]["status_code"] < 300)
        if status == "expired":  # as the Batch guide documents: unfinished requests go to the error file
            error_lines += [expired_line(item) for item in requests[len(done) :]]
        # The live API promises no order; a deterministic shuffle keeps tests reproducible.
        rng = random.Random(batch["id"])
        rng.shuffle(ok_lines)
        rng.shuffle(error_lines)
        expires_after = self._private[batch["id"]].get("output_expires_after")
        for key, lines in (("output_file_id", ok_lines), ("error_file_id", error_lines)):
            if lines:
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                name = f"{batch['id']}_{key.split('_')[0]}.jsonl"
                batch[key] = self.add_file(data, name, "batch_output", expires_after)["id"]
        batch["status"] = status
        batch[f"{status}_at"] = int(when)
        self._private[batch["id"]]["ended_at"] = when  # the token limit's reckoning needs it to the millisecond
        if status in ("completed",) and batch["finalizing_at"] is None:
            batch["finalizing_at"] = int(when)
        batch["request_counts"] = {"total": len(requests), "completed": len(ok_lines), "failed": len(error_lines)}
        batch["usage"] = {
            "input_tokens": usage["input_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        }
        models = {str(item.get("body", {}).get("model")) for item in requests if isinstance(item.get("body"), dict)}
        batch["model"] = sorted(models)[0] if models else None
        self._save()


def _done_count(total: int, fraction: float, cap: float | None, rounding: Callable[[float], int]) -> int:
    """How many of ``total`` requests ``fraction`` of the work has run, at most ``floor(cap x total)``.

    The cap tolerates float error (``0.29 * 100`` is ``28.999...``, yet 29 requests).
    """
    done = rounding(total * fraction)
    if cap is not None:
        done = min(done, math.floor(total * cap + 1e-9))
    return done
