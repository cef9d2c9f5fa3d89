"""`sebench models` and `sebench complexity`, in process and through the console script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backbones.errors import DEBUG_ENV, InputError, run_command
from sebench.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_models_table(capsys):
    assert main(["models", "--pattern", "*resnet50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["model", "input", "params(M)", "GMACs"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"resnet50", "se_resnet50"}
    assert rows["se_resnet50"][1:4] == ["224x224", "28.09", "3.866"], rows["se_resnet50"]


def test_complexity_json_with_se_knobs(capsys):
    assert main(["complexity", "se_resnet50", "resnet50", "--se-reduction", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["kwargs"] == {"se_reduction": 4} and rows[1]["kwargs"] == {}
    assert round(rows[0]["params"] / 1e6, 1) == 35.6 and rows[1]["params"] == 25557032


def test_complexity_input_size_and_kwarg(capsys):
    assert main(["complexity", "resnet50", "--input-size", "3", "112", "112",
                 "--kwarg", "stride_in_1x1=False"]) == 0
    out = capsys.readouterr().out
    assert "112x112" in out and "stride_in_1x1=False" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["complexity", "se_resnt50"], "did you mean se_resnet50"),
        (["complexity", "se_resnet50", "--kwarg", "strid_in_1x1=False"], "Did you mean stride_in_1x1"),
        (["complexity", "se_resnet50", "--se-stages", "7"], "stages are numbered"),
        (["models", "--pattern", "nothing*"], "no model matches"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_console_script_help():
    exe = shutil.which("sebench")
    if exe is None:
        pytest.skip("the sebench console script is not installed (pip install -e .)")
    out = subprocess.run([exe, "complexity", "--help"], capture_output=True, text=True, check=True)
    assert "--se-reduction" in out.stdout and "--input-size" in out.stdout


def _raise(error: Exception) -> None:
    raise error


def test_run_command_reports_input_errors_only(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert run_command("tool", lambda: _raise(InputError("bad --size 0: expected > 0"))) == 2
    assert capsys.readouterr().err == "tool: error: bad --size 0: expected > 0\n"
    # A ValueError or TypeError that is not one of ours is a bug: it keeps its traceback.
    for bug in (ValueError("math domain error"), TypeError("'NoneType' object is not iterable")):
        with pytest.raises(type(bug), match=str(bug)):
            run_command("tool", lambda bug=bug: _raise(bug))
    assert capsys.readouterr().err == ""
    assert run_command("tool", lambda: 3) == 3 and run_command("tool", lambda: {"a": 1}) == 0


def test_debug_env_prints_the_traceback_of_an_input_error(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert run_command("tool", lambda: _raise(InputError("bad value"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "_raise" in err, err
    assert err.endswith("tool: error: bad value\n"), err
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert run_command("tool", lambda: _raise(InputError("bad value"))) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_sebench_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")  # restored (unset) after the test; --debug sets it
    assert main(["--debug", "complexity", "se_resnt50"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "create_model" in err, err
    assert err.rstrip().splitlines()[-1].startswith("sebench complexity: error: unknown model")
    assert os.environ[DEBUG_ENV] == "1"  # for the processes a command starts

    # The documented way for every command, through a real process.
    env = dict(os.environ, PYTHONPATH=str(REPO), **{DEBUG_ENV: "1"})
    done = subprocess.run(
        [sys.executable, "-m", "sebench.cli", "complexity", "se_resnt50"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback (most recent call last):" in done.stderr
    assert "sebench complexity: error: unknown model 'se_resnt50'" in done.stderr


def test_a_library_error_is_not_reported_as_bad_input(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")
    # torch's own ValueError, from deep inside the model's construction: not an InputError, so
    # the command lets it propagate with its traceback instead of one line and status 2.
    with pytest.raises(ValueError, match="dropout probability") as info:
        main(["complexity", "resnet50", "--kwarg", "drop_rate=2.0"])
    assert not isinstance(info.value, InputError)
    assert "error:" not in capsys.readouterr().err
