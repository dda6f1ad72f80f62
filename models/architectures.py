"""The networks behind batchserve's families: the MLP (Linear layers with per-layer activations,
dropout, batch and layer normalization), the PyTorch-example character RNN classifier, a
recurrent sequence classifier over characters, words or numeric steps, and a recurrent language
model."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "none": nn.Identity,
}


class MLP(nn.Module):
    """Dense layers with one activation between them, or the given `stack` of modules (an
    nn.Sequential's children, so that its state_dict keys are `layers.<index>.*` as the user's
    were); returns the last layer's values (the head's softmax, sigmoid or target scaling is
    applied by the caller, as Keras' final `Dense(10, activation="softmax")` would)."""

    def __init__(
        self, layer_sizes: list[int], activation: str = "relu", stack: list[nn.Module] | None = None
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if stack is not None:
            layers = stack
        else:
            for i, (n_in, n_out) in enumerate(pairwise(layer_sizes)):
                layers.append(nn.Linear(n_in, n_out))
                if i < len(layer_sizes) - 2:
                    layers.append(ACTIVATIONS[activation]())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(x)
        return logits


class CharRNNClassifier(nn.Module):
    """The PyTorch tutorial's RNN: `i2h` and `i2o` read concat(one-hot char, hidden).

    cell="elman" is the tutorial's cell; `hidden_activation` "tanh" (batchserve's own models: it
    keeps long names from diverging) or "identity" (the tutorial as written). "rnn", "gru" and
    "lstm" replace the recurrence with a packed cuDNN-style RNN and read the output from the final
    hidden state with `i2o` ("rnn" is the tutorial's later i2h/h2h/h2o and nn.RNN/h2o versions). A
    whole padded batch runs in one call: rows are sorted by length, so step t only computes the
    rows still running (compute follows real tokens).
    """

    def __init__(
        self,
        alphabet_size: int,
        hidden_size: int,
        num_classes: int,
        cell: str = "elman",
        hidden_activation: str = "tanh",
    ):
        super().__init__()
        self.alphabet_size = alphabet_size
        self.hidden_size = hidden_size
        self.cell = cell
        activations: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "tanh": torch.tanh,
            "identity": _identity,
        }
        self.hidden_activation = activations[hidden_activation]
        if cell == "elman":
            self.i2h = nn.Linear(alphabet_size + hidden_size, hidden_size)
            self.i2o = nn.Linear(alphabet_size + hidden_size, num_classes)
        else:
            rnn_type = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
            self.rnn = rnn_type(alphabet_size, hidden_size, batch_first=True)
            self.i2o = nn.Linear(hidden_size, num_classes)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """chars: [B, T] alphabet indices (any padding value); lengths: [B] (on the CPU, >= 1).
        Returns log-probabilities [B, num_classes] in the input order."""
        lengths, order = torch.sort(lengths.cpu(), descending=True)
        chars = chars[order.to(chars.device)]
        one_hot = nn.functional.one_hot(chars.clamp(0, self.alphabet_size - 1), self.alphabet_size)
        one_hot = one_hot.to(self.i2o.weight.dtype)
        if self.cell == "elman":
            logits = self._elman(one_hot, lengths)
        else:
            packed = pack_padded_sequence(one_hot, lengths, batch_first=True)
            _, state = self.rnn(packed)
            hidden = state[0] if isinstance(state, tuple) else state
            logits = self.i2o(hidden[-1])
        out = torch.empty_like(logits)
        out[order.to(logits.device)] = self.log_softmax(logits)
        return out

    def _elman(self, one_hot: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch = one_hot.shape[0]
        hidden = one_hot.new_zeros(batch, self.hidden_size)
        logits = one_hot.new_empty(batch, self.i2o.out_features)
        # Rows still running at step t are a prefix of the batch (sorted by length, descending).
        active_at = [int((lengths > t).sum()) for t in range(int(lengths[0]))]
        for t, active in enumerate(active_at):
            ending = active_at[t + 1] if t + 1 < len(active_at) else 0
            combined = torch.cat((one_hot[:active, t], hidden[:active]), dim=1)
            if ending < active:
                logits[ending:active] = self.i2o(combined[ending:active])
            hidden = torch.cat((self.hidden_activation(self.i2h(combined)), hidden[active:]), dim=0)
        return logits


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class CharLM(nn.Module):
    """Character language model: embedding -> GRU/LSTM (packed) -> linear over the vocabulary.

    The vocabulary is the alphabet plus begin- and end-of-sequence tokens.

    For generation the recurrent state is one tensor per batch row, `[B, S, hidden]` with S =
    num_layers (GRU) or 2 * num_layers (LSTM: h then c), so that sequences join a running batch
    with `torch.cat` and leave it by indexing rows: `prefill` reads whole prompts, then `step`
    advances every row by one token."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: str = "gru",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        rnn_type = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn_type(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden_size, vocab_size)
        self.is_lstm = cell == "lstm"

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens: [B, T] (BOS first); lengths: [B] on the CPU. Returns next-token
        log-probabilities [B, T, vocab]; positions past a row's length are meaningless."""
        return self.prefill(tokens, lengths)[0]

    def prefill(
        self, tokens: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read whole prompts: tokens [B, T] (BOS first, unless `state` continues a sequence),
        lengths [B] on the CPU (>= 1). Returns the log-probabilities [B, T, vocab] of `forward`
        and the state [B, S, hidden] after each row's last real token."""
        packed = pack_padded_sequence(
            self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        output, final = self.rnn(packed, None if state is None else self._to_rnn(state))
        padded, _ = pad_packed_sequence(output, batch_first=True, total_length=tokens.shape[1])
        # The packed RNN returns the final state in the input's row order, as `padded` is.
        return torch.log_softmax(self.head(padded), dim=-1), self._from_rnn(final)

    def step(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance each row by one token: tokens [B] (the previous token of each sequence),
        state [B, S, hidden]. Returns next-token log-probabilities [B, vocab] and the new state."""
        output, final = self.rnn(self.embedding(tokens).unsqueeze(1), self._to_rnn(state))
        return torch.log_softmax(self.head(output[:, 0]), dim=-1), self._from_rnn(final)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """The state before any token, [B, S, hidden] zeros (what `forward` starts from); the
        first `step` input is then BOS."""
        rows = self.rnn.num_layers * (2 if self.is_lstm else 1)
        weight = self.head.weight
        return weight.new_zeros(batch_size, rows, self.rnn.hidden_size)

    def _to_rnn(self, state: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        layers = state.transpose(0, 1).contiguous()  # [S, B, hidden], as nn.GRU/nn.LSTM take it
        if self.is_lstm:
            h, c = torch.split(layers, self.rnn.num_layers)
            return h.contiguous(), c.contiguous()
        return layers

    def _from_rnn(self, final: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        layers = torch.cat(final) if isinstance(final, tuple) else final
        return layers.transpose(0, 1)


READOUTS = ("last", "mean", "max")


class SequenceClassifier(nn.Module):
    """An encoder (one-hot characters, an embedding over a vocabulary, or the numeric steps as
    they are) -> nn.RNN/GRU/LSTM (num_layers, bidirectional; packed, so compute follows each
    row's real steps) -> a readout -> `head` (nn.Linear). Readouts: "last" is the final hidden
    state of the last layer (both directions concatenated, forward then backward, as
    `torch.cat((h_n[-2], h_n[-1]), 1)`), "mean"/"max" pool the last layer's outputs over each
    row's real steps only (padding is never pooled). Returns [B, outputs] logits, or
    log-probabilities when `log_softmax`."""

    def __init__(
        self,
        encoder: str,
        input_size: int,
        cell: str,
        hidden_size: int,
        num_outputs: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        readout: str = "last",
        embedding_dim: int | None = None,
        nonlinearity: str = "tanh",
        log_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_size = input_size
        self.readout = readout
        self.is_lstm = cell == "lstm"
        self.bidirectional = bidirectional
        self.log_softmax = log_softmax
        width = input_size
        if encoder == "embedding":
            assert embedding_dim is not None
            self.embedding = nn.Embedding(input_size, embedding_dim)
            width = embedding_dim
        options: dict[str, object] = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        rnn_type = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn_type(
            width,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            **options,
        )
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_outputs)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """inputs: [B, T] token ids (one_hot, embedding) or [B, T, F] floats (numeric), padded
        anyhow; lengths: [B] (>= 1, on the CPU)."""
        if self.encoder == "embedding":
            steps = self.embedding(inputs)
        elif self.encoder == "one_hot":
            one_hot = nn.functional.one_hot(inputs.clamp(0, self.input_size - 1), self.input_size)
            steps = one_hot.to(self.head.weight.dtype)
        else:
            steps = inputs.to(self.head.weight.dtype)
        lengths = lengths.cpu()
        packed = pack_padded_sequence(steps, lengths, batch_first=True, enforce_sorted=False)
        output, final = self.rnn(packed)
        if self.readout == "last":
            hidden = final[0] if isinstance(final, tuple) else final  # in the input's row order
            features = torch.cat((hidden[-2], hidden[-1]), 1) if self.bidirectional else hidden[-1]
        else:
            padded, _ = pad_packed_sequence(output, batch_first=True)
            real = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
            real = real.to(padded.device)[:, :, None]
            if self.readout == "mean":
                total = padded.masked_fill(~real, 0.0).sum(1)
                features = total / lengths.to(padded.device, padded.dtype)[:, None]
            else:
                features = padded.masked_fill(~real, float("-inf")).amax(1)
        logits: torch.Tensor = self.head(features)
        return torch.log_softmax(logits, dim=-1) if self.log_softmax else logits
