"""The generation engine's running batch: its rows' key/value cache, attention mask and positions.

Two layouts behind one interface (``join`` prefilled rows, ``decode`` one step, ``keep`` some rows):

DynamicBatch  Hugging Face's DynamicCache. Every decode step appends a column to each layer's keys
              and values, which copies the whole cache, and the batch is as wide as its oldest row.
              Works for any model whose layers are plain full attention.
StaticBatch   Buffers allocated once, [max_active rows, heads, capacity, head_dim] per layer, written
              in place. The tensors a step reads and writes never move, so on a GPU the decode step of
              each batch size is captured once as a CUDA graph and replayed: one launch instead of one
              per kernel, which is what a decode step of a small batch is bound by. On the CPU, and
              where capture fails, the same step runs eagerly over the columns in use.

Both line rows up on a shared column: each row's last token sits in the same column, rows are
left-padded, and the attention mask hides the padding. One decode step then writes one column for
every row.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

STATIC_ATTENTION = ("sdpa", "eager")  # implementations that take a prepared 4D additive mask


class DynamicBatch:
    """Rows in a DynamicCache; finished rows are cut out and padding nobody needs is trimmed."""

    graphed = False

    def __init__(self, lm, trim_padding: bool = True):
        self.lm = lm
        self.trim_padding = trim_padding
        self.clear()

    def clear(self) -> None:
        self.rows = 0
        self.cache = None
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 where the cache holds a real token
        self.positions: torch.Tensor | None = None  # [rows]: position id of each row's next token
        self.next_tokens: torch.Tensor | None = None  # [rows]: the last sampled token, not yet in the cache

    @property
    def token_limit(self) -> int:
        return self.lm.context_window

    def join(self, cache, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append prefilled rows (their cache, left-padded prompt mask and first sampled tokens)."""
        positions = mask.sum(-1)
        if not self.rows:
            self.cache, self.mask, self.positions, self.next_tokens = cache, mask, positions, tokens
            self.rows = len(tokens)
            return
        columns = max(self.mask.shape[1], mask.shape[1])
        for running, joining in zip(self.cache.layers, cache.layers):
            running.keys = torch.cat([_left_pad(running.keys, columns), _left_pad(joining.keys, columns)])
            running.values = torch.cat([_left_pad(running.values, columns), _left_pad(joining.values, columns)])
        self.mask = torch.cat([_left_pad(self.mask, columns), _left_pad(mask, columns)])
        self.positions = torch.cat([self.positions, positions])
        self.next_tokens = torch.cat([self.next_tokens, tokens])
        self.rows += len(tokens)

    def decode(self) -> torch.Tensor:
        """One step for every row: the next-token logits, [rows, vocabulary]."""
        mask = torch.cat([self.mask, torch.ones((self.rows, 1), dtype=self.mask.dtype, device=self.mask.device)], 1)
        # Without padding the mask says nothing the causal default does not, and building it costs time.
        padded = not bool(self.mask.all())
        logits, self.cache = self.lm.forward(self.next_tokens[:, None], mask if padded else None,
                                             self.positions[:, None], self.cache)
        self.mask = mask
        self.positions = self.positions + 1
        return logits[:, -1, :]

    def set_next_tokens(self, tokens: torch.Tensor) -> None:
        self.next_tokens = tokens

    def keep(self, keep: list[int]) -> list[int]:
        """Keep only rows ``keep``; returns which old row each new row is (here: ``keep`` itself)."""
        if not keep:
            self.clear()
            return []
        rows = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(rows)
        self.mask, self.positions, self.next_tokens = self.mask[rows], self.positions[rows], self.next_tokens[rows]
        self.rows = len(keep)
        if self.trim_padding:
            self._trim_padding()
        return keep

    def _trim_padding(self) -> None:
        first_used = int(self.mask.any(dim=0).to(torch.int8).argmax())
        if first_used == 0:
            return
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first_used:]
            layer.values = layer.values[:, :, first_used:]
        self.mask = self.mask[:, first_used:]


class StaticBatch:
    """Rows in preallocated buffers; on CUDA, decode steps replay captured graphs.

    Columns: ``clock`` is the column the next step writes. Row r holds its tokens in
    [starts[r], clock). A prompt of p tokens joins in [clock - p, clock); when it is longer than
    ``clock``, every row moves right first. When ``clock`` reaches the capacity, every row moves
    left by the padding all of them share. Rows: the active ones are rows [0, rows); one that
    leaves is filled by the last row, so a step runs on a prefix of the buffers (a bucket of
    rows, on CUDA, so that a few graphs serve every batch size).
    """

    def __init__(self, lm, max_rows: int, capacity: int, cuda_graphs: bool = True, fixed_shapes: bool | None = None):
        self.lm = lm
        self.max_rows = max_rows
        self.capacity = capacity
        self.want_graphs = cuda_graphs and lm.device.type == "cuda"
        # Steps over a bucket of rows and every column: what a graph computes. Eager steps of this
        # shape check the graphs' arithmetic on any device.
        self.fixed_shapes = self.want_graphs if fixed_shapes is None else fixed_shapes
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.rows = 0
        self.clock = 0
        self.starts: list[int] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def graphed(self) -> bool:
        return bool(self.graphs)

    @property
    def token_limit(self) -> int:
        return self.capacity

    @staticmethod
    def supports(lm) -> str | None:
        """Why the model cannot use a static batch, or None when it can."""
        attention = getattr(lm.model.config, "_attn_implementation", None)
        if attention not in STATIC_ATTENTION:
            return f"attention implementation {attention!r} (static batches need one of {STATIC_ATTENTION})"
        return None

    def allocate(self, sample_cache) -> None:
        """Buffers shaped like ``sample_cache``'s layers (a prefill's DynamicCache), then the graphs."""
        device, rows, capacity = self.lm.device, self.max_rows, self.capacity
        for layer in sample_cache.layers:
            _, heads, _, key_dim = layer.keys.shape
            self.keys.append(torch.zeros((rows, heads, capacity, key_dim), dtype=layer.keys.dtype, device=device))
            self.values.append(torch.zeros((rows, heads, capacity, layer.values.shape[-1]),
                                           dtype=layer.values.dtype, device=device))
        self.mask = torch.zeros((rows, capacity), dtype=torch.bool, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.next_tokens = torch.full((rows,), self.lm.pad_token_id, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)  # where a step writes, read inside graphs
        self.starts = [0] * rows
        self.cache = _slot_cache(self.keys, self.values, self.column)
        self.mask_floor = torch.finfo(self.lm.dtype).min
        if self.want_graphs:
            self._capture_graphs()

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def clear(self) -> None:
        self.rows = 0
        self.clock = 0

    # -- rows --------------------------------------------------------------------------------------

    def join(self, cache, mask: torch.Tensor, tokens: torch.Tensor) -> None:
        joining, width = mask.shape
        if not self.rows:
            self.clock = width
        elif width > self.clock:
            self._move_columns(width - self.clock)
        first, last = self.rows, self.rows + joining
        low = self.clock - width
        for keys, values, layer in zip(self.keys, self.values, cache.layers):
            keys[first:last, :, low:self.clock] = layer.keys
            values[first:last, :, low:self.clock] = layer.values
        self.mask[first:last] = False
        self.mask[first:last, low:self.clock] = mask.bool()
        lengths = mask.sum(-1)
        self.positions[first:last] = lengths
        self.next_tokens[first:last] = tokens
        self.starts[first:last] = [self.clock - n for n in lengths.tolist()]
        self.rows = last

    def keep(self, keep: list[int]) -> list[int]:
        """Keep rows ``keep``: the last ones move into the holes. Returns the old row of each new row."""
        count, kept = len(keep), set(keep)
        holes = [row for row in range(count) if row not in kept]
        movers = [row for row in keep if row >= count]
        order = list(range(count))
        if holes:
            low = min(self.starts[row] for row in keep)
            source = torch.tensor(movers, device=self.mask.device)
            target = torch.tensor(holes, device=self.mask.device)
            for buffer in self.keys + self.values:
                buffer[target, :, low:self.clock] = buffer[source, :, low:self.clock]
            for tensor in (self.mask, self.positions, self.next_tokens):
                tensor[target] = tensor[source]
            for hole, mover in zip(holes, movers):
                self.starts[hole] = self.starts[mover]
                order[hole] = mover
        self.rows = count
        if not count:
            self.clear()
        return order

    def set_next_tokens(self, tokens: torch.Tensor) -> None:
        self.next_tokens[:self.rows] = tokens

    # -- steps -------------------------------------------------------------------------------------

    def decode(self) -> torch.Tensor:
        if self.clock == self.capacity:
            self._move_columns(-min(self.starts[:self.rows]))
        rows, width = (self._bucket(self.rows), self.capacity) if self.fixed_shapes else (self.rows, self.clock + 1)
        self.mask[:rows, self.clock] = True  # the token this step writes; rows past self.rows are idle
        self.column.fill_(self.clock)
        if rows in self.graphs:
            graph, logits = self.graphs[rows]
            graph.replay()
        else:
            logits = self._forward(rows, width)
        self.positions[:self.rows] += 1
        self.clock += 1
        return logits[:self.rows]

    def _forward(self, rows: int, width: int) -> torch.Tensor:
        """The model over one token per row, attending to columns [0, width): logits [rows, vocabulary]."""
        self.cache.view(rows, width)
        # 0 where a row may attend, the dtype's lowest value where it may not; 4D, so transformers uses it as is
        additive_mask = self.mask[:rows, None, None, :width].logical_not().to(self.lm.dtype) * self.mask_floor
        logits, _ = self.lm.forward(self.next_tokens[:rows, None], additive_mask, self.positions[:rows, None],
                                    self.cache)
        return logits[:, -1, :]

    def _move_columns(self, shift: int) -> None:
        """Move every row's tokens ``shift`` columns right (positive) or left (negative)."""
        if shift == 0:
            return
        rows, low, high = self.rows, min(self.starts[:self.rows]), self.clock
        if low + shift < 0 or high + shift > self.capacity:
            raise RuntimeError(f"cannot move columns [{low}, {high}) by {shift} in a cache of {self.capacity}")
        for buffer in self.keys + self.values:
            buffer[:rows, :, low + shift:high + shift] = buffer[:rows, :, low:high].clone()
        moved = self.mask[:rows, low:high].clone()
        self.mask[:rows] = False
        self.mask[:rows, low + shift:high + shift] = moved
        self.starts[:rows] = [start + shift for start in self.starts[:rows]]
        self.clock += shift

    # -- CUDA graphs -----------------------------------------------------------------------------

    def _buckets(self) -> list[int]:
        sizes = {self.max_rows}
        size = 1
        while size < self.max_rows:
            sizes.add(size)
            size *= 2
        return sorted(sizes)

    def _bucket(self, rows: int) -> int:
        return next(size for size in self._buckets() if size >= rows)

    def _capture_graphs(self) -> None:
        """One graph per bucket of rows, over the whole capacity; on failure, eager steps instead."""
        try:
            pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            # Warm-up runs pick and initialise the kernels each shape uses, outside any capture.
            with torch.cuda.stream(side):
                for rows in self._buckets():
                    self._forward(rows, self.capacity)
            torch.cuda.current_stream().wait_stream(side)
            for rows in reversed(self._buckets()):  # the largest first, so smaller ones reuse its memory
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    logits = self._forward(rows, self.capacity)
                self.graphs[rows] = (graph, logits)
        except Exception as error:  # an operation the model runs cannot be captured: stay eager
            log.warning("CUDA graphs unavailable; decoding without them", extra={"error": f"{error}"})
            self.graphs.clear()
            self.fixed_shapes = False
        finally:
            self.mask.zero_()
            self.clear()


def _slot_cache(keys: list[torch.Tensor], values: list[torch.Tensor], column: torch.Tensor):
    """A transformers Cache whose layers write one column of preallocated buffers in place."""
    from transformers.cache_utils import Cache, DynamicLayer

    class SlotLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor):
            super().__init__()
            self.all_keys, self.all_values = keys, values
            self.keys, self.values = keys, values
            self.device = keys.device
            self.is_initialized = True
            self.rows = self.width = 0

        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = self.all_keys[:self.rows], self.all_values[:self.rows]
            keys.index_copy_(2, column, key_states)
            values.index_copy_(2, column, value_states)
            return keys[:, :, :self.width], values[:, :, :self.width]

        def get_seq_length(self) -> int:
            return self.width

    class SlotCache(Cache):
        def view(self, rows: int, width: int) -> None:
            for layer in self.layers:
                layer.rows, layer.width = rows, width

    return SlotCache(layers=[SlotLayer(k, v) for k, v in zip(keys, values)])


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Pad the sequence axis (2 for cache tensors [rows, heads, seq, dim], 1 for masks) on the left."""
    missing = columns - tensor.shape[-2 if tensor.dim() == 4 else -1]
    if missing == 0:
        return tensor
    if tensor.dim() == 4:
        return F.pad(tensor, (0, 0, missing, 0))
    return F.pad(tensor, (missing, 0))
