"""Numeric precision and attention kernel: one decision per machine.

bfloat16 autocast keeps fp32's range with an 8-bit mantissa. Where the hardware has bf16
instructions (GPUs; CPUs with AVX-512 BF16 or AMX) a bf16 matmul runs 2-3x faster than fp32. Where
it has not (AVX2: most laptops), PyTorch emulates bf16 and the same matmul runs up to 100x
*slower*. So a CPU computes in bf16 exactly when it has those instructions: on x86 this is read
from the instruction set PyTorch reports (:func:`cpu_bf16`), the same answer in every process
whatever the load of the moment. Elsewhere (an Arm CPU, say), the two precisions are timed once,
and the timing is stored per machine (:func:`machine_timings`, ``python -m dino_lite precision
--remeasure`` measures again). The attention kernel is chosen from a stored timing too: PyTorch's
fused kernel (``scaled_dot_product_attention``) wins on GPUs, while on CPUs timm's explicit
softmax attention can be faster for the short sequences of small images.

A timing taken at every start would be a coin flip on a busy 2-core machine (the same command
measured bf16 "10.7x faster", "2.6x faster" and "1.2x slower" in three runs), and the precision
decides the recipe (the fp32 variant's smaller crops): runs that should match would not.

``bf16`` / ``fused_attention`` in the config are ``"auto"`` (this machine's decision), or forced:
``True`` / ``False`` and ``"on"`` / ``"off"``. GPUs always get bf16 and the fused kernel unless
forced.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BF16_MARGIN = 1.25       # where timed (not x86): bf16 only when at least this much faster than fp32
FUSED_MARGIN = 1.10      # the fused attention kernel likewise, against explicit attention
CACHE_ENV = "DINO_LITE_CACHE"   # folder of the stored per-machine timings (default ~/.cache/dino_lite)
# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) under which bf16 matmuls are native
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
              "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
              "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


@dataclass(frozen=True)
class Precision:
    """What a run computes in: bf16 autocast or fp32, fused or explicit attention, and why."""
    bf16: bool
    fused_attention: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self, device_type: str):
        """The autocast context for forward passes (a no-op in fp32)."""
        if not self.bf16:
            return nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Precision":
        return cls(bool(d["bf16"]), bool(d["fused_attention"]), str(d["reason"]))

    def __str__(self):
        attn = "fused" if self.fused_attention else "explicit"
        return f"precision: {self.name}, {attn} attention ({self.reason})"


def _seconds(fn, reps: int = 3) -> float:
    """The fastest of ``reps`` timed calls after one warm-up call (the minimum is the least
    disturbed by other processes)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _linear_step(width: int, rows: int, bf16: bool):
    """Forward + backward of the ViT's MLP layer (``width -> 4 width``) on ``rows`` tokens."""
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(width, 4 * width)
    x = torch.randn(rows, width, generator=g, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.float().sum().backward()
    return step


def _attention_step(width: int, heads: int, batch: int, tokens: int, fused: bool, bf16: bool):
    """Forward + backward of one timm attention layer with the fused kernel or explicit softmax."""
    from timm.layers import Attention   # timm's ViT block attention, the one our models use
    attn = Attention(width, num_heads=heads)
    attn.fused_attn = fused
    x = torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = attn(x)
        y.float().sum().backward()
    return step


@functools.lru_cache(maxsize=None)
def measure_cpu(width: int = 128, heads: int = 4, tokens: int = 65, batch: int = 32) -> dict:
    """Seconds for the model-shaped workloads on this CPU: ``fp32`` and ``bf16`` linear layers,
    and attention with the ``fused`` kernel and ``explicit`` softmax (in the faster precision).
    Cached per shape: a process measures once (about 0.1 s with native bf16, under 1 s without)."""
    # callers may be inside torch.no_grad() (evaluation); the probe's random weights must not
    # move the global generator, or a network built after it would depend on whether it ran
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        return _measure(width, heads, tokens, batch)


def _measure(width, heads, tokens, batch):
    rows = min(batch * tokens, 2048)
    with torch.enable_grad():      # the workloads take a backward step, also when called from
        times = {"fp32": _seconds(_linear_step(width, rows, False)),     # inside no_grad (evaluation)
                 "bf16": _seconds(_linear_step(width, rows, True), reps=2)}
        native = cpu_bf16()[0]      # attention is timed in the precision runs will use
        bf16 = native if native is not None else times["fp32"] / times["bf16"] >= BF16_MARGIN
        for name, fused in (("fused", True), ("explicit", False)):
            times[name] = _seconds(_attention_step(width, heads, batch, tokens, fused, bf16))
    return times


def _flag(value, name: str):
    """``"auto"`` -> None; booleans and on/off/true/false strings -> bool."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text == "auto":
        return None
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{name} must be auto, true/on or false/off, got {value!r}")


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool | None, str]:
    """Whether this CPU computes bf16 natively, and why: True / False on x86, read from the
    instruction set (AVX-512 BF16 or AMX, in the kernels PyTorch dispatches to: the
    ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` caps count); None elsewhere (then timed)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None, f"{platform.machine()} CPU"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if flags and capability.startswith("AVX512") and isa_cap in _BF16_ISAS:
        return True, "this CPU has bf16 instructions (AVX-512 BF16 / AMX)"
    if flags:
        return False, (f"bf16 instructions capped (PyTorch kernels: {capability}, oneDNN: {isa_cap}): "
                       f"bf16 would be emulated")
    return False, f"this CPU has no bf16 instructions ({capability}): bf16 would be emulated, far slower"


def cache_file() -> Path:
    """The JSON file holding this user's stored per-machine timings."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "dino_lite") / "precision.json"


def machine_id() -> str:
    """What the stored timings are keyed by: the CPU (model name, family and model numbers: two
    CPUs sold under one name can differ), PyTorch, and the kernels it may use."""
    cpu = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model", "Hardware", "CPU part"):
                    cpu.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = " / ".join(cpu.values()) or platform.processor() or "unknown CPU"
    return (f"{model} | {platform.machine()} | torch {torch.__version__} | "
            f"{torch.backends.cpu.get_cpu_capability()} | oneDNN {os.environ.get('ONEDNN_MAX_CPU_ISA', 'ALL')}")


def machine_timings(width: int = 128, heads: int = 4, tokens: int = 65, batch: int = 32,
                    remeasure: bool = False) -> dict:
    """:func:`measure_cpu`'s timings for this model shape on this machine: measured once, then
    read back from :func:`cache_file` by every later process (``remeasure`` measures again)."""
    path, key, shape = cache_file(), machine_id(), f"{width}x{heads}x{tokens}x{batch}"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    if not remeasure and isinstance(stored.get(key, {}).get(shape), dict):
        return stored[key][shape]
    if remeasure:
        measure_cpu.cache_clear()
    times = measure_cpu(width, heads, tokens, batch)
    stored.setdefault(key, {})[shape] = times
    try:            # best effort: a read-only home still gets a decision, measured per process
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return times


def choose(bf16="auto", fused_attention="auto", device_type: str = "cpu", width: int = 128,
           heads: int = 4, tokens: int = 65, batch: int = 32, measure=None) -> Precision:
    """The precision and attention kernel to run with. On CPU, ``auto`` bf16 follows
    :func:`cpu_bf16` (where it knows) and the rest follows the stored :func:`machine_timings`;
    ``measure`` (tests) replaces those timings."""
    want_bf16, want_fused = _flag(bf16, "bf16"), _flag(fused_attention, "fused_attention")
    if want_bf16 is not None and want_fused is not None:
        return Precision(want_bf16, want_fused, "set in the config")
    if device_type != "cpu":
        return Precision(True if want_bf16 is None else want_bf16,
                         True if want_fused is None else want_fused, f"{device_type}: bf16 is native")
    reasons = []
    native, why = cpu_bf16() if measure is None else (None, "")
    if want_bf16 is not None:
        reasons.append(f"bf16 {'on' if want_bf16 else 'off'} as set")
    elif native is not None:
        want_bf16 = native
        reasons.append(why)
    times = None
    if want_bf16 is None or want_fused is None:
        times = (measure or machine_timings)(width, heads, tokens, batch)
    if want_bf16 is None:
        ratio = times["fp32"] / times["bf16"]
        want_bf16 = ratio >= BF16_MARGIN
        reasons.append(f"bf16 measured {ratio:.1f}x faster than fp32 on this CPU" if ratio >= 1 else
                       f"bf16 measured {1 / ratio:.1f}x slower than fp32 on this CPU")
    if want_fused is None:
        speed = times["explicit"] / times["fused"]
        want_fused = speed >= FUSED_MARGIN
        reasons.append(f"fused attention measured at {speed:.1f}x the speed of explicit")
    return Precision(want_bf16, want_fused, "; ".join(reasons))


def model_shape(cfg) -> tuple[int, int, int, int]:
    """``(width, heads, tokens, batch)`` of ``cfg``'s model: the shape its timings are taken at."""
    from .models import VIT_SIZES
    width, _, heads = VIT_SIZES.get(cfg.arch, (128, 0, 4))
    tokens = (cfg.global_size // cfg.patch_size) ** 2 + 1 if cfg.arch in VIT_SIZES else 65
    return width, heads, tokens, max(1, min(cfg.batch_size, 64))


def for_config(cfg, device_type: str | None = None) -> Precision:
    """The precision a run of ``cfg`` uses on ``device_type`` (default: CUDA when available)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    return choose(cfg.bf16, cfg.fused_attention, device_type, *model_shape(cfg))


@torch.no_grad()
def seconds_per_image(backbone, image_size: int, precision: Precision, batch: int = 64) -> float:
    """Forward seconds per image of ``backbone`` at ``image_size`` px in ``precision``: the cost
    of evaluation (k-NN features, attention maps), used to say how long a command will take."""
    device = next(backbone.parameters()).device
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    backbone.eval()

    def forward():
        with precision.autocast(device.type):
            backbone(x)
    return _seconds(forward, reps=2) / batch
