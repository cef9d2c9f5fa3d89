"""Machine, library and code facts recorded next to every benchmark figure.

A figure is only worth as much as what it says it measured: the code (commit, and whether the
working tree differed from it), the software (torch, CUDA, cuDNN, the NVIDIA driver) and the
machine (CPU or GPU model, threads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

from backbones.errors import InputError

# The repository the benchmarks' code lives in: the code measured, whatever the working folder.
REPO = Path(__file__).resolve().parents[1]
# What can change the code measured: sources and the package's own settings, not results or docs.
CODE_PATHS = ("*.py", "pyproject.toml")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout


def code_state() -> dict[str, object]:
    """``git_commit`` (the full hash, or "unknown" outside a git checkout), ``git_dirty`` (code
    that differs from it: changed or untracked sources) and ``git_changes`` (those files, at
    most 20)."""
    commit = (_run(["git", "rev-parse", "HEAD"]) or "").strip()
    if not commit:
        return {"git_commit": "unknown", "git_dirty": None, "git_changes": []}
    status = _run(["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS])
    changes = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"git_commit": commit, "git_dirty": bool(changes), "git_changes": changes[:20]}


def _gpu() -> dict[str, str]:
    """The GPU, its driver and the CUDA and cuDNN versions torch runs with."""
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": torch.cuda.get_device_name(),
        "driver": driver.split()[0] if driver and driver.strip() else "unknown",
        "cuda": torch.version.cuda or "",
        "cudnn": str(cudnn) if cudnn is not None else "none",
    }


def environment() -> dict[str, object]:
    env: dict[str, object] = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        cpu=_cpu_model(),
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        **code_state(),
    )
    if torch.cuda.is_available():
        env.update(_gpu())
    return env


def describe(env: dict) -> str:
    """The machine, software and code of a run, for the line above a result table."""
    machine = env.get("gpu", env["cpu"])
    if "gpu" in env:
        machine += f", driver {env['driver']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}"
    code = str(env["git_commit"])[:12] + (" + uncommitted changes" if env.get("git_dirty") else "")
    return (
        f"{machine}; torch {env['torch']}, {env['threads']} threads; commit {code}; {env['date']}"
    )


def settings_of(args: argparse.Namespace) -> dict:
    """A run's command-line settings as JSON values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def require_at_least_one(args: argparse.Namespace, *keys: str) -> None:
    """Refuse a count flag below 1, naming the flag and the value given."""
    for key in keys:
        if getattr(args, key) < 1:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"{flag} must be at least 1, got {getattr(args, key)}")


def save_result(result: dict, path: Path | None) -> None:
    """Write a benchmark's result as JSON, if a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
