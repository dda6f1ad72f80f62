"""Step-level batching for generation: the sequences of all concurrent requests advance together,
one token per step, in one forward pass per step; a request that arrives while others run joins
at the next step, and a sequence that finishes or whose client leaves frees its row at once.

Each step runs on the device's inference thread (the one the dynamic batcher uses): read the
prompts of the sequences that joined (one packed forward pass), choose every running sequence's
next token, and advance the ones that go on. Only the event loop touches the bookkeeping; only
the inference thread touches the tensors."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

import torch

from app.errors import DEADLINE_PASSED, DeadlineExceeded, ModelNotReady, QueueFull
from app.serving.batcher import client_gone
from models.architectures import CharLM
from models.sampling import SamplingParams, next_tokens

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class TokenLogProb:
    """One position of a sequence: its token, the token's log-probability there (None for a
    start token, which nothing predicts) and the most likely tokens there, most likely first."""

    token_id: int
    log_prob: float | None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one step gives a sequence: the echoed prompt positions (first step only) and the new
    token, if any; `finish_reason` once it is done (`stop`: it chose end-of-sequence)."""

    echo: tuple[TokenLogProb, ...]
    token: TokenLogProb | None
    finish_reason: FinishReason | None


@dataclass(frozen=True, slots=True)
class StepReport:
    """One step, for the metrics: how many sequences it advanced and how long it took."""

    sequences: int
    joined: int
    tokens: int
    compute_s: float


@dataclass(frozen=True, slots=True)
class SequenceRequest:
    prompt: tuple[int, ...]  # token ids, the start token first
    max_new_tokens: int  # 0: read the prompt only
    params: SamplingParams
    generator: torch.Generator | None
    top_logprobs: int = 0  # alternatives reported per position
    echo_from: int | None = None  # report the prompt's positions from this one on (None: not)


@dataclass(eq=False)
class GeneratingSequence:
    """A submitted sequence: its outputs arrive on `outputs` (an exception ends them early)."""

    request: SequenceRequest
    deadline: float | None
    gone: Callable[[], bool] | None = None  # the client left
    outputs: asyncio.Queue[StepOutput | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    generated: int = 0

    def cancel(self) -> None:
        """Stop at the next step: the client left, or a stop string ended it."""
        self.cancelled = True


@dataclass
class _Batch:
    """The running sequences' tensors; only the inference thread reads or writes them."""

    state: torch.Tensor | None = None  # [B, S, hidden]
    log_probs: torch.Tensor | None = None  # [B, vocab], each row's next-token distribution


class StepScheduler:
    """One per language-model version: up to `max_running` sequences advance together."""

    def __init__(
        self,
        model: CharLM,
        device: torch.device,
        executor: Executor,
        bos: int,
        eos: int,
        max_running: int,
        max_waiting: int,
        observer: Callable[[StepReport], None] | None = None,
    ) -> None:
        self.model, self.device, self.executor = model, device, executor
        self.observer = observer
        self.bos, self.eos = bos, eos
        self.max_running, self.max_waiting = max_running, max_waiting
        self._waiting: deque[GeneratingSequence] = deque()
        self._running: list[GeneratingSequence] = []
        self._batch = _Batch()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> int:
        return len(self._waiting) + len(self._running)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        """Finish every accepted sequence, then stop."""
        while self.busy:
            await asyncio.sleep(0.01)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def submit(
        self,
        requests: Sequence[SequenceRequest],
        deadline: float | None,
        gone: Callable[[], bool] | None = None,
    ) -> list[GeneratingSequence]:
        """Queue the sequences of one request, all or none."""
        if self._task is None:
            raise ModelNotReady("this model version is not accepting work (it is being unloaded)")
        if len(self._waiting) + len(requests) > self.max_waiting:
            raise QueueFull(
                f"the generation queue of this model is full ({len(self._waiting)} sequences "
                "waiting); retry later",
                headers={"Retry-After": "1"},
            )
        sequences = [GeneratingSequence(request, deadline, gone) for request in requests]
        self._waiting.extend(sequences)
        self._wakeup.set()
        return sequences

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting and not self._running:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            joining = self._admit()
            keep = [i for i, s in enumerate(self._running) if self._live(s)]
            self._running = [self._running[i] for i in keep]
            started = time.monotonic()
            try:
                outputs = await loop.run_in_executor(self.executor, self._step, joining, keep)
            except Exception as exc:  # noqa: BLE001 - the model failed: end every sequence
                for sequence in [*self._running, *joining]:
                    sequence.outputs.put_nowait(exc)
                self._running, self._batch = [], _Batch()
                continue
            self._deliver([*self._running, *joining], outputs)
            if self.observer is not None:
                tokens = sum(o.token is not None for o in outputs)
                report = StepReport(len(outputs), len(joining), tokens, time.monotonic() - started)
                self.observer(report)
            await asyncio.sleep(0)  # a turn for requests that are ready to join

    def _admit(self) -> list[GeneratingSequence]:
        now = time.monotonic()
        joining: list[GeneratingSequence] = []
        while self._waiting and len(self._running) + len(joining) < self.max_running:
            sequence = self._waiting.popleft()
            if not self._live(sequence):
                continue
            if sequence.deadline is not None and now > sequence.deadline:
                sequence.outputs.put_nowait(DeadlineExceeded(DEADLINE_PASSED))
                continue
            joining.append(sequence)
        return joining

    @staticmethod
    def _live(sequence: GeneratingSequence) -> bool:
        """Still wanted: not cancelled, and its client (where that can be asked) still there."""
        if sequence.cancelled:
            return False
        if sequence.gone is not None and sequence.gone():
            sequence.cancel()
            sequence.outputs.put_nowait(client_gone())
            return False
        return True

    def _deliver(self, sequences: list[GeneratingSequence], outputs: list[StepOutput]) -> None:
        running = []
        for sequence, output in zip(sequences, outputs, strict=True):
            sequence.outputs.put_nowait(output)
            if output.finish_reason is None:
                running.append(sequence)
        self._running = running

    # -- on the inference thread --------------------------------------------------------------
    def _step(self, joining: list[GeneratingSequence], keep: list[int]) -> list[StepOutput]:
        """Drop the rows not in `keep`, read the joining prompts, choose each row's next token,
        and advance the rows that go on. Returns one output per row (running, then joining)."""
        with torch.inference_mode():
            batch = self._batch
            if batch.state is not None and batch.log_probs is not None:
                rows = torch.tensor(keep, dtype=torch.long, device=self.device)
                batch.state, batch.log_probs = batch.state[rows], batch.log_probs[rows]
            echoes = self._prefill(joining) if joining else []
            sequences = [*self._running, *joining]
            echoed = [()] * (len(sequences) - len(echoes)) + echoes
            return self._choose(sequences, echoed)

    def _prefill(self, joining: list[GeneratingSequence]) -> list[tuple[TokenLogProb, ...]]:
        prompts = [list(s.request.prompt) for s in joining]
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        tokens = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            tokens[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        log_probs, state = self.model.prefill(tokens.to(self.device), lengths)
        last = log_probs[torch.arange(len(prompts)), lengths - 1]
        batch = self._batch
        batch.state = state if batch.state is None else torch.cat((batch.state, state))
        batch.log_probs = last if batch.log_probs is None else torch.cat((batch.log_probs, last))
        return [
            _echo(s.request, log_probs[i, : len(s.request.prompt)]) for i, s in enumerate(joining)
        ]

    def _choose(
        self, sequences: list[GeneratingSequence], echoed: list[tuple[TokenLogProb, ...]]
    ) -> list[StepOutput]:
        batch = self._batch
        assert batch.log_probs is not None and batch.state is not None
        log_probs = batch.log_probs
        params = [s.request.params for s in sequences]
        generators = [s.request.generator for s in sequences]
        chosen = next_tokens(log_probs, params, generators, forbidden=[self.bos])
        picked = log_probs.gather(1, chosen[:, None])[:, 0].tolist()
        k = max(s.request.top_logprobs for s in sequences)
        tops = _top(log_probs, k)
        outputs, going = [], []
        for i, sequence in enumerate(sequences):
            request = sequence.request
            if request.max_new_tokens == 0:  # the prompt only
                outputs.append(StepOutput(echoed[i], None, "length"))
                continue
            token = int(chosen[i])
            new = TokenLogProb(token, picked[i], tops[i][: request.top_logprobs])
            sequence.generated += 1
            finish: FinishReason | None = None
            if token == self.eos:
                finish = "stop"
            elif sequence.generated >= request.max_new_tokens:
                finish = "length"
            else:
                going.append(i)
            outputs.append(StepOutput(echoed[i], new, finish))
        if going:
            rows = torch.tensor(going, dtype=torch.long, device=self.device)
            batch.log_probs, batch.state = self.model.step(chosen[rows], batch.state[rows])
        else:
            batch.log_probs = batch.state = None
        return outputs


def _top(log_probs: torch.Tensor, k: int) -> list[tuple[tuple[int, float], ...]]:
    """The k most likely tokens of each row, as (id, log-prob) pairs."""
    if k == 0:
        return [()] * log_probs.shape[0]
    values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    return [
        tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)
    ]


def _echo(request: SequenceRequest, log_probs: torch.Tensor) -> tuple[TokenLogProb, ...]:
    """The prompt's positions from `echo_from` on: position t's token as predicted from position
    t - 1 (the start token, which nothing predicts, has no log-probability)."""
    if request.echo_from is None:
        return ()
    prompt = request.prompt
    targets = torch.tensor(prompt[1:], dtype=torch.long, device=log_probs.device)
    picked = log_probs[:-1].gather(1, targets[:, None])[:, 0].tolist()
    tops = _top(log_probs[:-1], request.top_logprobs)
    start = TokenLogProb(prompt[0], None, ())
    rest = (TokenLogProb(t, p, top) for t, p, top in zip(prompt[1:], picked, tops, strict=True))
    return (start, *rest)[request.echo_from :]
