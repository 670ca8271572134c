"""The serving engine: one worker thread per loaded model, continuous batching over its sequences.

A ``Worker`` owns a ``Model`` loaded with ``parallel`` sequences sharing one (unified) KV cache;
every llama.cpp call happens on its thread. Requests (``Job``s) wait in a bounded FIFO queue;
each free sequence takes the next job, the one whose cached prompt shares the longest prefix
with it (a client resending its history evaluates only the new tokens). All running answers
then advance together in one ``llama_decode`` a step: one token each, or, with the model's
assistant drafter (``--draft``), the last token and the drafts after it, verified and accepted
per answer as ``g4 chat`` does (``g4cli/chat/runtime/speculate.py``). Events go back to the asyncio side
through ``Job.emit``; a cancelled job (client gone, stop string seen) frees its sequence at the
next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from g4cli.chat.conversation import Event, Stats, Turn
from g4cli.chat.settings import LoadOptions, Sampling
from g4cli.errors import DraftUnavailable, G4Error, RuntimeFailure

if TYPE_CHECKING:
    from g4cli.chat.runtime.cache import Sequence
    from g4cli.chat.runtime.generate import Decoder
    from g4cli.chat.runtime.model import Model
    from g4cli.chat.select import Choice


HANDOFF_S = 0.005  # at most this long a step waits for the tokens of the last one to be sent


class Busy(G4Error):
    """Every sequence is busy and the queue is full (HTTP 503 with Retry-After)."""


class ContextExceeded(G4Error):
    """The prompt does not fit one sequence's context (HTTP 400)."""


@dataclass
class GenRequest:
    """What to generate: the whole conversation, how to sample, which tools the template offers."""

    turns: list[Turn]
    sampling: Sampling
    tools: list[dict] | None = None


@dataclass
class Job:
    """One request in a worker: its events flow back to the event loop of the HTTP handler."""

    request: GenRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)  # its consumer has sent all it got
    stats: Stats = field(default_factory=Stats)
    queued_at: float = field(default_factory=time.perf_counter)
    # worker-side state
    seq: Sequence | None = None
    decoder: Decoder | None = None
    pending: int | None = None  # the token to evaluate at the next step
    drafts: list[int] = field(default_factory=list)  # proposed after ``pending`` this step
    ready: bool = False  # the drafter holds the hidden state of the token before ``pending``

    def emit(self, ev: Event | Exception) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    def cancel(self) -> None:
        self.cancelled.set()


class Worker(threading.Thread):
    """A loaded model serving up to ``parallel`` answers at once."""

    def __init__(
        self, choice: Choice, load: LoadOptions, *, parallel: int, max_queue: int, on_load: Callable | None = None
    ) -> None:
        super().__init__(name=f"g4-worker-{choice.name}", daemon=True)
        self.choice, self.load, self.parallel, self.max_queue = choice, load, parallel, max_queue
        self.cond = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.free: list[Sequence] = []
        self.stopping = False
        self.loaded = threading.Event()
        self.load_error: BaseException | None = None
        self.model: Model | None = None
        self.last_used = time.monotonic()
        self.keep_alive: float | None = None  # seconds; None: the pool's default; < 0: forever
        self.on_load = on_load

    # --- the HTTP side --------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise Busy(f"{self.choice.name} is being unloaded; try again")
            if len(self.active) + len(self.waiting) >= self.parallel + self.max_queue:
                raise Busy(
                    f"{self.choice.name} is busy: {len(self.active)} answers running, {len(self.waiting)} queued"
                )
            self.waiting.append(job)
            self.last_used = time.monotonic()
            self.cond.notify()

    @property
    def load_count(self) -> int:
        with self.cond:
            return len(self.active) + len(self.waiting)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    # --- the worker thread ----------------------------------------------------------------------

    def run(self) -> None:
        from g4cli.chat.runtime.batch import StepBatch

        try:
            self.model = self._load()
        except BaseException as e:  # reported to whoever waits for the load
            self.load_error = e
            self.loaded.set()
            return
        self.free = list(self.model.sequences)
        self.loaded.set()
        if self.on_load:
            self.on_load(self)
        from g4cli.chat.runtime.speculate import Pace

        drafter = self.model.drafter
        self.pace = Pace(self.model.draft_paced)  # --draft auto: whether drafting pays, timed per step
        step = StepBatch(self.parallel * (1 + (self.model.draft_max if drafter else 0)))
        try:
            while True:
                with self.cond:
                    while not self.stopping and not self.waiting and not self.active:
                        self.cond.wait()
                    if self.stopping:
                        break
                self._admit()
                self._step(step)
        finally:
            for job in self.active + list(self.waiting):
                job.emit(RuntimeFailure(f"{self.choice.name} was unloaded"))
            step.close()
            self.model.close()

    def _load(self) -> Model:
        from g4cli.chat.drafting import attach_for
        from g4cli.chat.load import open_model

        model = open_model(self.choice, self.load, n_seq=self.parallel)
        try:
            attach_for(model, self.choice, self.load)
        except BaseException:
            model.close()
            raise
        return model

    @property
    def ctx_per_seq(self) -> int:
        assert self.model is not None
        return self.model.n_ctx // self.parallel if self.load.ctx else self.model.n_ctx

    def _admit(self) -> None:
        """Free sequences take waiting jobs (FIFO), each the sequence with the longest cached prefix."""
        while True:
            with self.cond:
                if not self.waiting or not self.free:
                    return
                job = self.waiting.popleft()
            if job.cancelled.is_set():
                continue
            try:
                self._start(job)
            except Exception as e:  # one bad request (a prompt too long, a media error): only it fails
                if job.seq is not None:
                    self.free.append(job.seq)
                job.emit(e)

    def _start(self, job: Job) -> None:
        from g4cli.chat.runtime.cache import common_prefix
        from g4cli.chat.runtime.generate import Decoder, prefill

        model = self.model
        assert model is not None
        req = job.request
        stats = job.stats
        stats.load_s = model.load_s
        t0 = time.perf_counter()
        media = [m for t in req.turns for m in t.media]
        text = model.render(req.turns, req.sampling.think, tools=req.tools)
        with model.tokenize_prompt(text, media) as prompt:
            limit = self.ctx_per_seq
            if prompt.n_pos >= limit:
                raise ContextExceeded(
                    f"the prompt ({prompt.n_pos} tokens) does not fit the context ({limit} tokens per sequence)"
                )
            seq = max(self.free, key=lambda s: common_prefix(s.units, prompt.units))
            self.free.remove(seq)
            job.seq = seq
            stats.prompt_tokens, stats.prompt_eval_tokens = prefill(model, seq, prompt)
        stats.prompt_s = time.perf_counter() - t0
        job.decoder = Decoder(model, seq, req.sampling, stats, t0, n_ctx=limit)
        self._advance(job, -1)
        if job.decoder is not None:
            self.active.append(job)

    def _advance(self, job: Job, row: int) -> None:
        """Sample the job's next token from output ``row``; finish it when the answer is over."""
        assert job.decoder is not None
        events, tok = job.decoder.step(row)
        if events:
            job.idle.clear()
        for ev in events:
            job.emit(ev)
        if tok is None:
            self._finish(job, job.decoder.finish)
        else:
            job.pending = tok

    def _finish(self, job: Job, finish: str) -> None:
        if job.decoder is not None:
            job.decoder.close()
            job.decoder = None
        if job.seq is not None:
            self.free.append(job.seq)  # its cache stays: the next request may extend it
        job.emit(Event("done", finish=finish, stats=job.stats))
        self.last_used = time.monotonic()

    def _step(self, step: Any) -> None:
        """One token more for every running answer, in one decode."""
        for job in [j for j in self.active if j.cancelled.is_set()]:
            self.active.remove(job)
            job.stats.interrupted = True
            self._finish(job, "cancelled")
        if not self.active:
            return
        # Let the event loop send the tokens sampled so far before the next decode: on a CPU whose
        # cores all run ggml's spinning threads, HTTP work done meanwhile preempts one of them and
        # stalls the whole graph at its next barrier (and delays the first token on the wire)
        deadline = time.perf_counter() + HANDOFF_S
        for job in self.active:
            job.idle.wait(max(0.0, deadline - time.perf_counter()))
        running = list(self.active)
        t0 = time.perf_counter()
        try:
            self._propose(running, step.capacity)
            starts = step.decode(self.model, [(job.seq, [job.pending, *job.drafts]) for job in running])
        except (RuntimeFailure, DraftUnavailable) as e:
            for job in running:
                self.active.remove(job)
                if job.seq is not None:
                    job.seq.clear()
                    self.free.append(job.seq)
                job.emit(e)
            return
        tokens = 0
        for job, row in zip(running, starts, strict=True):
            if self.model.drafter is None:
                self._advance(job, row)
            else:
                tokens += self._accept(job, row)
            if job.decoder is None:
                self.active.remove(job)
        if self.model.drafter is not None:
            self.pace.record(time.perf_counter() - t0, tokens, any(job.drafts for job in running))

    def _propose(self, running: list[Job], capacity: int) -> None:
        """Each drafting answer's drafts for this step, within the batch's rows and llama.cpp's n_batch."""
        from g4cli.chat.runtime.speculate import propose

        model = self.model
        assert model is not None
        rows = min(capacity, model.n_batch) - len(running)  # one row each for the pending tokens
        for job in running:
            job.drafts = []
            if model.drafter is not None and job.ready and rows > 0 and self.pace.wants_drafts():
                assert job.decoder is not None and job.seq is not None and job.pending is not None
                job.drafts = propose(model.drafter, job.decoder, job.seq, job.pending, min(model.draft_max, rows))
                rows -= len(job.drafts)

    def _accept(self, job: Job, row: int) -> int:
        """Sample the job's verify rows from ``row`` on, keeping drafts while the chain agrees;
        returns the tokens the answer gained."""
        from g4cli.chat.runtime.speculate import accept

        assert job.decoder is not None and job.seq is not None and self.model is not None
        stats = job.decoder.stats
        stats.drafting = True
        pos0 = job.seq.n_past - 1 - len(job.drafts)
        events, tok, j = accept(job.decoder, job.seq, job.drafts, row, pos0)
        if self.pace.pays is not False:
            self.model.drafter.take_hidden(row + j, job.seq.seq_id)
        self.pace.report(stats)
        job.ready = True
        if events:
            job.idle.clear()
        for ev in events:
            job.emit(ev)
        if tok is None:
            self._finish(job, job.decoder.finish)
        else:
            job.pending = tok
        return j + 1
