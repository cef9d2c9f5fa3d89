"""`sebench models` and `sebench complexity`, in process and through the console script."""

import json
import shutil
import subprocess

import pytest

from sebench.cli import main


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
