"""Machine and library facts recorded next to every benchmark figure."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, str | int]:
    env: dict[str, str | int] = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        cpu=_cpu_model(),
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        git_commit=_git_commit(),
    )
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda or ""
    return env


def save_result(result: dict, path: Path | None) -> None:
    """Write a benchmark's result as JSON, if a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
