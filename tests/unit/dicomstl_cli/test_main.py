"""The dicomstl command as a user runs it: output, exit codes, and no patient data anywhere."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from dicomstl_cli.main import main
from tests.dicom_factory import (
    PATIENT_ID,
    PATIENT_NAME,
    lps_grid,
    pydicom_uid_of,
    sphere_hu,
    write_series,
)

SECRETS = [PATIENT_NAME, PATIENT_ID, "DOE", "8675309"]


@pytest.fixture
def series(tmp_path):
    shape = (16, 24, 24)
    origins = [[0, 0, float(z)] for z in range(shape[0])]
    grid = lps_grid(shape, (1, 0, 0), (0, 1, 0), (1, 1), origins)
    folder = tmp_path / "DOE_JANE_SECRET"
    write_series(folder, sphere_hu(grid, (12, 12, 8), 6, 1), origins=origins)
    return folder


def test_convert_writes_model_report_and_prints_the_summary(series, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    out, report = tmp_path / "model.stl", tmp_path / "report.json"
    code = main(["convert", str(series), "-o", str(out), "--level", "0", "--report",
                 str(report), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0
    assert "watertight yes" in printed.out and "triangles" in printed.out
    data = json.loads(report.read_text())
    assert data["mesh"]["watertight"] and data["mesh"]["parts"] == 1
    assert data["mesh"]["volume_cm3"] == pytest.approx(4 / 3 * np.pi * 6**3 / 1000, rel=0.02)
    assert set(data["timings_s"]) >= {"read", "decode", "surface", "write"}
    everything = (printed.out + printed.err + caplog.text + report.read_text()).upper()
    stl_header = out.read_bytes()[:80].upper()
    for secret in SECRETS:
        assert secret.upper() not in everything
        assert secret.upper().encode() not in stl_header
    assert out.read_bytes().upper().find(b"DOE^JANE") == -1


def test_inspect_lists_series_without_patient_data(series, capsys):
    assert main(["inspect", str(series), "--json"]) == 0
    text = capsys.readouterr().out
    listing = json.loads(text)
    assert listing["series"][0]["slices"] == 16 and listing["series"][0]["usable"]
    for secret in SECRETS:
        assert secret not in text


def test_inspect_table_shows_the_whole_series_uid_in_a_narrow_terminal(series, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["inspect", str(series)]) == 0
    text = capsys.readouterr().out
    folded = "".join(line.split("│")[1].strip() for line in text.splitlines()
                     if line.count("│") > 2)
    assert pydicom_uid_of(series) in folded


@pytest.mark.parametrize("args, message", [
    (["--keep", "most"], "--keep takes"),
    (["--decimate", "1.5"], "--decimate takes"),
    (["--preset", "bone", "--series", "1.2.3"], "not in the input"),
    (["--time-point", "3"], "time point 3 is out of range"),
    (["--level", "5000"], "no voxel reaches the threshold"),
    (["--backend", "gpu"], "--backend gpu is not available"),
    (["--segment", "a=0", "--segment", "b=0"], "written as a .3mf"),
    (["--segment", "a=0", "--preset", "bone"], "not both"),
])
def test_bad_options_give_clear_errors_and_exit_2(series, tmp_path, capsys, args, message):
    code = main(["convert", str(series), "-o", str(tmp_path / "m.stl"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err.replace("\n", " ")
    assert "Traceback" not in err
    assert not (tmp_path / "m.stl").exists()


def test_segments_are_one_model_each(series, tmp_path, capsys):
    import zipfile

    out, report = tmp_path / "m.zip", tmp_path / "r.json"
    code = main(["convert", str(series), "-o", str(out), "--quiet", "--segment", "all=-500",
                 "--segment", "shell=-500:500,color=#00FF00", "--report", str(report)])
    text = capsys.readouterr().out
    assert code == 0 and "segment shell (band)" in text
    assert zipfile.ZipFile(out).namelist() == ["all.stl", "shell.stl"]
    segments = json.loads(report.read_text())["segments"]
    assert [(s["name"], s["color"], s["level2"]) for s in segments] == [
        ("all", segments[0]["color"], None), ("shell", "#00ff00", 500.0)]
    with pytest.raises(SystemExit):
        main(["convert", str(series), "-o", str(out), "--segment", "x=femur"])
    assert "neither a preset" in capsys.readouterr().err


def test_missing_output_folder_is_a_user_error(series, tmp_path, capsys):
    code = main(["convert", str(series), "-o", str(tmp_path / "nope" / "m.stl"), "--quiet"])
    assert code == 2 and "folder does not exist" in capsys.readouterr().err


def test_console_script_runs_in_a_fresh_process(series, tmp_path):
    out = tmp_path / "m.3mf"
    run = subprocess.run([sys.executable, "-m", "dicomstl_cli.main", "convert", str(series), "-o",
                          str(out), "--level", "0", "--keep", "largest", "--mesh-smooth", "5"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:2] == b"PK"
    # not a terminal: one line per stage, in order, and no redraws (no carriage returns)
    stages = [line.split()[0] for line in run.stderr.splitlines() if " done in " in line]
    assert stages == ["read", "decode", "volume", "smooth", "islands", "cavities", "surface",
                      "decimate", "mesh-smooth", "check", "printability", "write"]
    assert "\r" not in run.stderr and "\x1b[" not in run.stderr
    assert "Numba kernels" in run.stdout  # the warm-up says what compiled


def test_messages_with_brackets_are_printed_whole(series, tmp_path, capsys):
    """Error text and descriptions are not rich markup: "[gpu]" must reach the user."""
    code = main(["convert", str(series), "-o", str(tmp_path / "m.stl"), "--backend", "gpu",
                 "--quiet"])
    assert code == 2
    assert "pip install '.[gpu]'" in " ".join(capsys.readouterr().err.split())  # unwrapped
