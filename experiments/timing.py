"""The one timing helper shared by every ``experiments/bench_*.py`` (docs/design.md §7).

* :func:`time_call` — wall time of a call: warm-up, repeated samples, median and spread.
* :func:`machine_info` — what the numbers were measured on (CPU, cores, library versions, GPU).
* :func:`markdown_table`, :func:`write_results` — the markdown table and the atomic JSON /
  markdown (/ PNG) writers every benchmark uses for its ``--out`` folder.

Typical use::

    from experiments.timing import time_call, sync_for, write_results, markdown_table
    stats = time_call(lambda: f(x), repeats=7, min_time=0.05, sync=sync_for(x.device))
    stats["median_s"], stats["iqr_s"]

Every time key ends in ``_s`` and is in seconds. Only the standard library is imported at module
level; torch / numpy / cvxpy are looked up lazily by :func:`machine_info`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = ["time_call", "sync_for", "machine_info", "markdown_table", "write_results",
           "to_jsonable"]

#: Distributions whose versions :func:`machine_info` records (missing ones are reported as None).
VERSION_PACKAGES = ("torch", "numpy", "scipy", "cvxpy", "clarabel", "osqp", "scs", "highspy",
                    "matplotlib")


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, min_time: float = 0.0,
              max_time: float | None = None, sync: Callable[[], Any] | None = None,
              return_result: bool = False) -> dict[str, Any]:
    """Time ``fn()`` (no arguments) and return summary statistics of the per-call wall time.

    Parameters
    ----------
    warmup : calls made (and discarded) before timing: JIT/allocator/cache warm-up.
    repeats : number of timed samples.
    min_time : each sample runs ``fn`` ``number`` times in a loop, with ``number`` chosen from a
        calibration call so that a sample lasts ≥ ``min_time`` seconds; the sample is the mean
        per call. Use it for calls near the timer resolution; leave 0 for slow calls.
    max_time : optional budget in seconds for the timed samples: once the samples taken so far
        add up to more than it, stop (at least one sample is always taken). ``repeats`` in the
        result is the number actually taken.
    sync : called after warm-up and before each clock read, e.g. ``torch.cuda.synchronize`` for
        CUDA work (asynchronous kernels are otherwise not timed); see :func:`sync_for`.
    return_result : also return the last ``fn()`` value under ``"result"`` (not JSON-able; pop it).

    Returns a dict with ``median_s, min_s, max_s, mean_s, q1_s, q3_s, iqr_s`` (quartiles by
    linear interpolation), ``repeats`` (samples taken), ``number`` (calls per sample),
    ``warmup``, ``samples_s`` (every sample, in order) and ``cpu_median_s`` / ``cpu_samples_s``:
    the process CPU time per call (all threads; ``time.process_time``, so CUDA work that the
    host only waits for is not in it). On a busy machine wall time includes waiting for a core
    while CPU time does not: compare the two (and ``machine_info()["load_average"]``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    _sync = sync or _noop
    result = None
    for _ in range(warmup):
        result = fn()
    _sync()
    number = 1
    if min_time > 0:
        t0 = time.perf_counter()
        result = fn()
        _sync()
        once = time.perf_counter() - t0
        number = max(1, math.ceil(min_time / max(once, 1e-9)))
    samples: list[float] = []
    cpu: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(number):
            result = fn()
        _sync()
        elapsed = time.perf_counter() - t0
        cpu.append((time.process_time() - c0) / number)
        samples.append(elapsed / number)
        spent += elapsed
        if max_time is not None and spent > max_time:
            break
    stats = summarize(samples)
    stats.update(repeats=len(samples), number=number, warmup=warmup,
                 cpu_median_s=statistics.median(cpu), cpu_samples_s=cpu)
    if return_result:
        stats["result"] = result
    return stats


def summarize(samples: Iterable[float]) -> dict[str, Any]:
    """Median, min, max, mean, quartiles and IQR of a list of times (seconds)."""
    xs = [float(s) for s in samples]
    if not xs:
        raise ValueError("no samples")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs),
            "mean_s": statistics.fmean(xs), "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1,
            "samples_s": xs}


def sync_for(device: Any) -> Callable[[], Any] | None:
    """``torch.cuda.synchronize`` (bound to ``device``) for a CUDA device, else ``None``."""
    if str(device).startswith("cuda"):
        import torch
        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return None


def machine_info() -> dict[str, Any]:
    """Describe the machine and software: CPU model, cores, versions, CVXPY solvers, GPU.

    Never raises: anything that cannot be determined is ``None``.
    """
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in VERSION_PACKAGES},
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # other work on the machine skews timings: record the 1/5/15-minute load averages
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": None, "gpu": None, "cuda": None, "cvxpy_solvers": None,
    }
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch is a hard dependency, but stay total
        pass
    try:
        import cvxpy
        info["cvxpy_solvers"] = sorted(cvxpy.installed_solvers())
    except Exception:  # pragma: no cover
        pass
    return info


def markdown_table(rows: list[Mapping[str, Any]], columns: list[str], *,
                   headers: Mapping[str, str] | None = None, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns`` (in that order).

    Floats use ``floatfmt``; ``None``/missing/NaN print as ``—``; ``|`` in cells is escaped.
    ``headers`` optionally renames columns.
    """
    headers = headers or {}

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = [headers.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | os.PathLike, name: str, payload: Mapping[str, Any],
                  table_md: str, *, figure: Any = None) -> dict[str, Path]:
    """Write ``out_dir/name.json`` (payload + ``"machine"``), ``name.md`` and optionally ``name.png``.

    ``machine_info()`` is embedded under ``"machine"`` unless the payload already has one.
    Non-finite floats become ``null`` and numpy/torch scalars plain numbers (:func:`to_jsonable`).
    ``figure`` is a matplotlib Figure saved as PNG. Every file is written to a temporary file
    in ``out_dir`` and moved into place with ``os.replace``, so a crash never leaves a partial
    file. Returns the paths written, keyed ``json``, ``md`` (and ``png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    data.setdefault("machine", machine_info())
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    _atomic_write(paths["json"], lambda f: f.write(text.encode()))
    _atomic_write(paths["md"], lambda f: f.write(table_md.encode()))
    if figure is not None:
        paths["png"] = out / f"{name}.png"
        _atomic_write(paths["png"], lambda f: figure.savefig(f, format="png", dpi=120,
                                                             bbox_inches="tight"))
    return paths


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy/torch scalars and arrays, tuples and paths to JSON types;
    NaN/±Inf become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(binary file)`` through :func:`lipdeq.io.atomic_write` (temp file, fsync, replace)."""
    from lipdeq.io import atomic_write
    with atomic_write(path, "wb") as f:
        write(f)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or None
        except Exception:
            pass
    return platform.processor() or None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _noop() -> None:
    return None


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (unchanged when None); restore after."""
    import torch
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
