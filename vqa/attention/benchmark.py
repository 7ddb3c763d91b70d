"""Timing, memory and FLOP accounting for the attention scaling benchmark.

`scripts/bench_attention.py` is the command-line front end. Every backend runs forward plus
backward on the same random input, which requires grad as it would inside a network. On CPU the
run is fp32 and timed with `time.perf_counter`. On CUDA it runs under bf16 autocast and is timed
with CUDA events. Each measurement is a median over repeats taken after warm-up.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from vqa.attention import build_attention

BACKENDS = ("dba", "full", "linformer")


@dataclass
class BenchConfig:
    """Settings of one benchmark run.

    Attributes:
        lengths: Sequence lengths N (self-attention, so M = N).
        batch_tokens: batch * N of the fixed-token series. Lengths above it run at batch 1 only.
        dim: Model width D.
        heads: Number of heads H.
        latents: DBA latent slots L, also used as Linformer's projected length k.
        reduced_dim: DBA reduced width r.
        repeats: Timed repeats per measurement; the median is reported.
        warmup: Untimed runs before the repeats.
        max_full_length: Longest N at which full attention is run.
        device: "cpu" or "cuda".
        backends: Backends to run.
        matmul_size: Size of the square reference matmul timed in every round.
    """

    lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192, 16384])
    batch_tokens: int = 8192
    dim: int = 512
    heads: int = 8
    latents: int = 64
    reduced_dim: int = 64
    repeats: int = 7
    warmup: int = 1
    max_full_length: int = 8192
    device: str = "cpu"
    backends: tuple[str, ...] = BACKENDS
    matmul_size: int = 2048


@dataclass
class Measurement:
    """One backend at one (length, batch): the JSON record plus derived figures."""

    backend: str
    length: int
    batch: int
    device: str
    dtype: str
    ms_median: float
    peak_mem_mb: float
    memory_metric: str
    gflop: float
    ms_all: list[float]
    matmul_gflops: float

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s from the analytic forward-plus-backward count."""
        return self.gflop / (self.ms_median / 1000.0)

    @property
    def matmul_fraction(self) -> float:
        """Achieved GFLOP/s over the reference matmul rate timed in the same rounds."""
        return self.gflops / self.matmul_gflops

    def record(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "length": self.length,
            "batch": self.batch,
            "device": self.device,
            "dtype": self.dtype,
            "ms_median": round(self.ms_median, 3),
            "peak_mem_mb": round(self.peak_mem_mb, 2),
            "memory_metric": self.memory_metric,
            "ms_min": round(min(self.ms_all), 3),
            "gflop_per_s": round(self.gflops, 2),
            "matmul_gflop_per_s": round(self.matmul_gflops, 2),
        }


def attention_flops(kind: str, batch: int, length: int, config: BenchConfig) -> float:
    """Return the analytic matmul FLOPs of one forward plus backward self-attention call, in GFLOP.

    Only matrix products are counted (2 FLOPs per multiply-add). Backward is counted as twice the
    forward, since every product needs the gradients of both operands here. Per-head products are
    counted at their per-head size. DBA's packing scores run as one block-diagonal GEMM that does
    H times that work, so the count understates the arithmetic DBA executes by about 3% at the
    default sizes (D=512, H=8, L=64, r=64).
    """
    b, n, d, h = batch, length, config.dim, config.heads
    lat, r = config.latents, config.reduced_dim
    if kind == "dba":
        forward = (
            2 * b * n * d * (r + d + h * lat)  # packing keys, values and unpacking logits
            + 2 * lat * d * r  # packing queries from the shared latent
            + 2 * b * lat * n * r  # packing scores
            + 2 * b * lat * n * d  # packing weighted sum
            + 2 * b * lat * d * (2 * r + d)  # latent q, k, v
            + 2 * b * lat * lat * (r + d)  # latent scores and weighted sum
            + 2 * b * n * lat * d  # unpacking
            + 2 * b * n * d * d  # output projection
        )
    elif kind == "full":
        forward = 2 * b * n * d * 3 * d + 4 * b * n * n * d + 2 * b * n * d * d
    elif kind == "linformer":
        forward = (
            2 * b * n * d * 3 * d
            + 2 * 2 * b * lat * n * d  # E @ K and F @ V
            + 4 * b * n * lat * d  # scores and weighted sum over k slots
            + 2 * b * n * d * d
        )
    else:
        raise ValueError(f"no FLOP count for attention kind {kind!r}; valid kinds: {list(BACKENDS)}")
    return 3 * forward / 1e9


def build_backend(kind: str, config: BenchConfig) -> nn.Module:
    """Build one backend at the benchmark sizes."""
    options: dict[str, object] = {}
    if kind == "dba":
        options = {"num_latents": config.latents, "reduced_dim": config.reduced_dim}
    elif kind == "linformer":
        options = {"max_len": max(config.lengths), "proj_len": config.latents}
    return build_attention(kind, config.dim, config.heads, **options).to(config.device)


class MatmulReference:
    """A square matmul in the benchmark dtype whose rate is the reference for what this machine reaches.

    Args:
        device: "cpu" or "cuda".
        size: Matrix size; the product is (size x size) @ (size x size).
    """

    def __init__(self, device: str, size: int) -> None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.device = device
        self.gflop = 2 * size**3 / 1e9
        self._a = torch.randn(size, size, device=device, dtype=dtype)
        self._b = torch.randn(size, size, device=device, dtype=dtype)

    def time(self) -> float:
        """Return the seconds of one product."""
        return _time_call(lambda: self._a @ self._b, self.device)


def measure_matmul_rate(device: str, size: int = 4096, repeats: int = 5) -> float:
    """Return the median GFLOP/s of a (size x size) @ (size x size) product in the benchmark dtype."""
    reference = MatmulReference(device, size)
    times = [reference.time() for _ in range(repeats + 1)][1:]
    return reference.gflop / statistics.median(times)


class SavedTensorMeter:
    """Sum of the bytes of distinct storages that autograd saves for backward, excluding parameters.

    `tracemalloc` cannot see torch's allocations, so on CPU this measures activation memory instead.
    It is the memory held between forward and backward, not a true peak: temporaries freed during
    forward and the buffers of backward are not counted.
    """

    def __init__(self, module: nn.Module) -> None:
        self._parameter_storages = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self._storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._parameter_storages:
            self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def megabytes(self) -> float:
        return sum(self._storages.values()) / 2**20


def _time_call(fn, device: str) -> float:
    """Return the seconds `fn` takes, with CUDA events on CUDA."""
    # NOTE: the CUDA branches here and in `_memory` (events, bf16 autocast, peak memory) have not
    # been run yet, because no GPU was available where this benchmark was written.
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_time = time.perf_counter()
    fn()
    return time.perf_counter() - start_time


def _forward_backward(module: nn.Module, x: torch.Tensor, device: str) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        out, _ = module(x)
    out.float().sum().backward()


def _memory(module: nn.Module, x: torch.Tensor, device: str) -> tuple[float, str]:
    """Return (megabytes, metric name) for one forward plus backward."""
    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _forward_backward(module, x, device)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20, "cuda_peak_allocated_above_baseline"
    meter = SavedTensorMeter(module)
    module.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda tensor: tensor):
        out, _ = module(x)
    out.sum().backward()
    return meter.megabytes, "saved_for_backward"


def measure_point(
    modules: dict[str, nn.Module],
    batch: int,
    length: int,
    config: BenchConfig,
    reference: MatmulReference,
) -> list[Measurement]:
    """Time every backend and the reference matmul at one (batch, length), in interleaved rounds.

    Each round runs every backend once and the matmul once. Interleaving spreads load from other
    processes over all of them alike, which keeps the ratios fair on a shared machine.
    """
    device = config.device
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, config.dim, generator=generator).to(device).requires_grad_()
    times: dict[str, list[float]] = {kind: [] for kind in modules}
    matmul_times: list[float] = []
    for kind, module in modules.items():
        for _ in range(config.warmup):
            _forward_backward(module, x, device)
    for _ in range(config.repeats):
        for kind, module in modules.items():
            times[kind].append(_time_call(lambda: _forward_backward(module, x, device), device))
        matmul_times.append(reference.time())
    matmul_gflops = reference.gflop / statistics.median(matmul_times)

    results = []
    for kind, module in modules.items():
        megabytes, metric = _memory(module, x, device)
        ms_all = [t * 1000.0 for t in times[kind]]
        results.append(
            Measurement(
                backend=kind,
                length=length,
                batch=batch,
                device=device,
                dtype="bfloat16" if device == "cuda" else "float32",
                ms_median=statistics.median(ms_all),
                peak_mem_mb=megabytes,
                memory_metric=metric,
                gflop=attention_flops(kind, batch, length, config),
                ms_all=ms_all,
                matmul_gflops=matmul_gflops,
            )
        )
    return results


def benchmark_points(config: BenchConfig) -> list[tuple[int, int]]:
    """Return the (batch, length) points: batch 1 at every length, then batch * N = batch_tokens."""
    points = [(1, n) for n in config.lengths]
    for n in config.lengths:
        batch = config.batch_tokens // n
        if batch >= 2 and batch * n == config.batch_tokens:
            points.append((batch, n))
    return points


def run_benchmark(config: BenchConfig, log=print) -> list[Measurement]:
    """Run every backend at every benchmark point and return the measurements."""
    unknown = sorted(set(config.backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; valid backends: {list(BACKENDS)}")
    torch.manual_seed(0)
    modules = {kind: build_backend(kind, config) for kind in config.backends}
    reference = MatmulReference(config.device, config.matmul_size)
    results: list[Measurement] = []
    for batch, length in benchmark_points(config):
        chosen = {
            kind: module
            for kind, module in modules.items()
            if kind != "full" or length <= config.max_full_length
        }
        point = measure_point(chosen, batch, length, config, reference)
        summary = ", ".join(f"{m.backend} {m.ms_median:.1f} ms" for m in point)
        log(f"batch {batch:>3} length {length:>6}: {summary}, matmul {point[0].matmul_gflops:.0f} GFLOP/s")
        results.extend(point)
    return results
