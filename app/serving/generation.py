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
from models.sampling import SamplingParams, draw, next_tokens

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
    """One per language-model version: up to `max_running` sequences advance together.

    One sequence never fails another: a step that raises is run again sequence by sequence
    (with the random numbers each had drawn for it), so that only the sequence at fault ends,
    with its own error, and the others go on as they would have alone."""

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
        self._joining: list[GeneratingSequence] = []  # in their first step, on the thread
        self._batch = _Batch()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False

    @property
    def busy(self) -> int:
        """Sequences accepted and not yet finished: waiting, in their first step, or running."""
        return len(self._waiting) + len(self._joining) + len(self._running)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever())
            self._accepting = True

    async def stop(self) -> None:
        """Refuse new sequences, finish every accepted one (first steps included), then stop;
        should the scheduler have died, the sequences it left are answered with an error."""
        self._accepting = False
        while self.busy and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        left = [*self._waiting, *self._joining, *self._running]
        self._waiting.clear()
        self._joining, self._running, self._batch = [], [], _Batch()
        for sequence in left:
            sequence.outputs.put_nowait(_not_accepting())

    def submit(
        self,
        requests: Sequence[SequenceRequest],
        deadline: float | None,
        gone: Callable[[], bool] | None = None,
    ) -> list[GeneratingSequence]:
        """Queue the sequences of one request, all or none."""
        if self._task is None or not self._accepting:
            raise _not_accepting()
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
            self._joining = joining
            started = time.monotonic()
            try:
                outputs = await loop.run_in_executor(self.executor, self._step, joining, keep)
            except Exception as exc:  # noqa: BLE001 - the step's own errors come per sequence
                outputs = [exc] * (len(self._running) + len(joining))
                self._batch = _Batch()
            self._deliver([*self._running, *joining], outputs)
            self._joining = []
            if self.observer is not None:
                tokens = sum(isinstance(o, StepOutput) and o.token is not None for o in outputs)
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

    def _deliver(
        self, sequences: list[GeneratingSequence], outputs: Sequence[StepOutput | BaseException]
    ) -> None:
        """Hand each sequence its output; the ones that go on (in the order of the batch's rows)
        are the running set of the next step."""
        running = []
        for sequence, output in zip(sequences, outputs, strict=True):
            sequence.outputs.put_nowait(output)
            if isinstance(output, StepOutput) and output.finish_reason is None:
                running.append(sequence)
        self._running = running

    # -- on the inference thread --------------------------------------------------------------
    def _step(
        self, joining: list[GeneratingSequence], keep: list[int]
    ) -> list[StepOutput | BaseException]:
        """Drop the rows not in `keep`, read the joining prompts, choose each row's next token,
        and advance the rows that go on. Returns one output (or error) per row: running, then
        joining. Should the batch fail, each sequence is stepped alone."""
        running = self._running
        with torch.inference_mode():
            state, log_probs = self._batch.state, self._batch.log_probs
            if state is not None and log_probs is not None:
                rows = torch.tensor(keep, dtype=torch.long, device=self.device)
                state, log_probs = state[rows], log_probs[rows]
            sequences = [*running, *joining]
            draws = [_draw(s) for s in sequences]  # before anything can fail: drawn once
            outputs: list[StepOutput | BaseException]
            try:
                if any(isinstance(d, BaseException) for d in draws):
                    raise ValueError("a sequence could not draw its random number")
                outputs, self._batch = self._advance(running, joining, state, log_probs, draws)
            except Exception:  # noqa: BLE001 - narrowed down to the sequence at fault below
                outputs, self._batch = self._one_by_one(running, joining, state, log_probs, draws)
        for sequence, output in zip(sequences, outputs, strict=True):
            if isinstance(output, StepOutput) and output.token is not None:
                sequence.generated += 1
        return outputs

    def _one_by_one(
        self,
        running: list[GeneratingSequence],
        joining: list[GeneratingSequence],
        state: torch.Tensor | None,
        log_probs: torch.Tensor | None,
        draws: list[float | BaseException | None],
    ) -> tuple[list[StepOutput | BaseException], _Batch]:
        """The step of each sequence alone: its error is its own, and the rows of the ones that
        go on are put back together, in order."""
        outputs: list[StepOutput | BaseException] = []
        states, rows_log_probs = [], []
        for i, sequence in enumerate([*running, *joining]):
            drawn = draws[i]
            if isinstance(drawn, BaseException):
                outputs.append(drawn)
                continue
            try:
                if i < len(running):
                    assert state is not None and log_probs is not None
                    own = state[i : i + 1], log_probs[i : i + 1]
                    (output,), batch = self._advance([sequence], [], *own, [drawn])
                else:
                    (output,), batch = self._advance([], [sequence], None, None, [drawn])
            except Exception as exc:  # noqa: BLE001 - this sequence's own failure
                outputs.append(exc)
                continue
            outputs.append(output)
            if batch.state is not None and batch.log_probs is not None:
                states.append(batch.state)
                rows_log_probs.append(batch.log_probs)
        if not states:
            return outputs, _Batch()
        return outputs, _Batch(torch.cat(states), torch.cat(rows_log_probs))

    def _advance(
        self,
        running: list[GeneratingSequence],
        joining: list[GeneratingSequence],
        state: torch.Tensor | None,
        log_probs: torch.Tensor | None,
        draws: Sequence[float | BaseException | None],
    ) -> tuple[list[StepOutput | BaseException], _Batch]:
        """One step of these rows (the running ones' `state` and `log_probs`, then the joining
        ones' prompts), changing nothing outside: the outputs and the rows that go on."""
        echoes: list[tuple[TokenLogProb, ...]] = []
        if joining:
            echoes, prompt_state, last = self._prefill(joining)
            state = prompt_state if state is None else torch.cat((state, prompt_state))
            log_probs = last if log_probs is None else torch.cat((log_probs, last))
        assert state is not None and log_probs is not None
        sequences = [*running, *joining]
        echoed = [()] * (len(sequences) - len(echoes)) + echoes
        floats = [d if not isinstance(d, BaseException) else None for d in draws]
        return self._choose(sequences, echoed, state, log_probs, floats)

    def _prefill(
        self, joining: list[GeneratingSequence]
    ) -> tuple[list[tuple[TokenLogProb, ...]], torch.Tensor, torch.Tensor]:
        prompts = [list(s.request.prompt) for s in joining]
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        tokens = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            tokens[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        log_probs, state = self.model.prefill(tokens.to(self.device), lengths)
        last = log_probs[torch.arange(len(prompts)), lengths - 1]
        echoes = [
            _echo(s.request, log_probs[i, : len(s.request.prompt)]) for i, s in enumerate(joining)
        ]
        return echoes, state, last

    def _choose(
        self,
        sequences: list[GeneratingSequence],
        echoed: list[tuple[TokenLogProb, ...]],
        state: torch.Tensor,
        log_probs: torch.Tensor,
        draws: list[float | None],
    ) -> tuple[list[StepOutput | BaseException], _Batch]:
        params = [s.request.params for s in sequences]
        generators = [s.request.generator for s in sequences]
        chosen = next_tokens(log_probs, params, generators, forbidden=[self.bos], draws=draws)
        picked = log_probs.gather(1, chosen[:, None])[:, 0].tolist()
        k = max(s.request.top_logprobs for s in sequences)
        tops = _top(log_probs, k)
        outputs: list[StepOutput | BaseException] = []
        going = []
        for i, sequence in enumerate(sequences):
            request = sequence.request
            if request.max_new_tokens == 0:  # the prompt only
                outputs.append(StepOutput(echoed[i], None, "length"))
                continue
            token = int(chosen[i])
            new = TokenLogProb(token, picked[i], tops[i][: request.top_logprobs])
            finish: FinishReason | None = None
            if token == self.eos:
                finish = "stop"
            elif sequence.generated + 1 >= request.max_new_tokens:
                finish = "length"
            else:
                going.append(i)
            outputs.append(StepOutput(echoed[i], new, finish))
        if not going:
            return outputs, _Batch()
        rows = torch.tensor(going, dtype=torch.long, device=self.device)
        next_log_probs, next_state = self.model.step(chosen[rows], state[rows])
        return outputs, _Batch(next_state, next_log_probs)


def _not_accepting() -> ModelNotReady:
    return ModelNotReady("this model version is not accepting work (it is being unloaded)")


def _draw(sequence: GeneratingSequence) -> float | BaseException | None:
    """The sequence's random number for this step (None: greedy), or why it has none."""
    try:
        return draw(sequence.request.params, sequence.request.generator)
    except Exception as exc:  # noqa: BLE001 - that sequence's failure alone
        return exc


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
