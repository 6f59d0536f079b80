"""The CLI's contract, through the real `fnpack` command: the README's exit-code table row by row (for the
commands that make and examine archives: build, inspect, run, init, schema, version), `--json` as exactly
one JSON object on one line of stdout (errors: one JSON object with `exit_code` on stderr), `--version`,
bare `fnpack`, shell completion, help texts, and the over-budget report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES, REPO, CliResult, fnpack
from servers import free_port


def edit_spec(folder: Path, **changes: object) -> None:
    spec_path = folder / "fnpack.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec.update(changes)
    spec_path.write_text(yaml.safe_dump(spec))


def one_json_line(text: str) -> dict:
    """The whole of `text` is one JSON object on one line."""
    assert text.endswith("\n") and text.count("\n") == 1, text
    value = json.loads(text)
    assert isinstance(value, dict), text
    return value


def json_error(result: CliResult, code: int) -> dict:
    """A `--json` command that failed: nothing on stdout, one JSON object on stderr holding its exit code."""
    assert result.code == code, result.stdout + result.stderr
    assert result.stdout == "", result.stdout
    error = one_json_line(result.stderr.splitlines(keepends=True)[-1])  # logs (run --as lambda) may come first
    assert error["exit_code"] == code and error["message"], error
    return error


@pytest.fixture
def iris(tmp_path: Path) -> Path:
    folder = tmp_path / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    return folder


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """iris built for local and for aws-lambda; its scorer fails at import when IRIS_FAIL_AT_START is set."""
    folder = tmp_path_factory.mktemp("contract") / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    score = folder / "score.py"
    score.write_text(score.read_text() + "\n\nimport os\n\nif os.environ.get('IRIS_FAIL_AT_START'):\n"
                     "    raise RuntimeError('IRIS_FAIL_AT_START is set')\n")
    built = {}
    for target in ("local", "aws-lambda"):
        result = fnpack("build", str(folder), "--target", target, "--out", str(folder / target), "--json")
        assert result.code == 0, result.stdout + result.stderr
        built[target] = Path(one_json_line(result.stdout)["archive"])
    return built


# --- row 0: success; --json is one object on one line -----------------------------------------------------


def test_version_and_bare_fnpack():
    from fnpack import __version__

    assert (fnpack("--version").code, fnpack("--version").stdout) == (0, f"{__version__}\n")
    assert fnpack("version").stdout == f"{__version__}\n"
    assert one_json_line(fnpack("version", "--json").stdout) == {"version": __version__}
    bare = fnpack()
    assert bare.code == 0 and "Usage: fnpack" in bare.stdout and "build" in bare.stdout
    for option in ("--version", "--install-completion", "--show-completion"):  # shell completion is on
        assert option in bare.stdout
    group = fnpack("alias")  # a group without its command: its help, like bare `fnpack`
    assert group.code == 0 and "Usage: fnpack alias" in group.stdout


def test_schema_and_init_json(tmp_path):
    schema = fnpack("schema", "--json")
    assert schema.code == 0 and one_json_line(schema.stdout)["required"] == ["name", "model"]
    assert json.loads(fnpack("schema").stdout) == json.loads(schema.stdout)  # pretty without --json

    created = fnpack("init", "churn", "--json", cwd=tmp_path)
    assert created.code == 0, created.stderr
    result = one_json_line(created.stdout)
    assert result["name"] == "churn" and result["template"] == "tabular" and (tmp_path / result["created"]).is_dir()


def test_build_inspect_json_is_one_line(archives):
    report = fnpack("inspect", str(archives["local"]), "--json")
    assert report.code == 0 and one_json_line(report.stdout)["intact"] is True


def test_run_lambda_json_is_one_line(archives):
    request = json.dumps({"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5})
    result = fnpack("run", str(archives["aws-lambda"]), "--as", "lambda", "--data", request, "--json")
    assert result.code == 0, result.stderr
    answer = one_json_line(result.stdout)
    assert answer["status"] == "ok" and answer["answer"]["label"] == "virginica"


# --- row 1: a function answered with an error ---------------------------------------------------------------


def test_function_error_is_exit_1(archives):
    plain = fnpack("run", str(archives["aws-lambda"]), "--as", "lambda", "--data", "{}")
    assert plain.code == 1 and "missing field 'sepal_length'" in plain.stderr
    error = json_error(fnpack("run", str(archives["aws-lambda"]), "--as", "lambda", "--data", "{}", "--json"), 1)
    assert error["error"] == "function-error" and "sepal_length" in error["message"]


# --- row 2: bad command-line usage, everywhere ----------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (["build", "--target", "gcp"],
     "unknown target 'gcp' (--target); expected one of: local, aws-lambda, knative, openfaas"),
    (["build", "--target", "aws-lamda"], "did you mean aws-lambda?"),
    (["build", "--max-size", "lots"], "'lots' is not a size; expected e.g. 45MB"),
    (["build", "--no-such-option"], "No such option: --no-such-option"),
    (["init", "My_Fn"], "NAME 'My_Fn' is not a lower-case DNS label"),
    (["init", "x", "--template", "video"], "unknown template 'video' (--template); expected one of: tabular, image"),
    (["init"], "Missing argument 'NAME'"),
    (["inspect"], "Missing argument 'ARCHIVE'"),
    (["run", "x.zip", "--as", "docker"], "unknown mode 'docker' (--as); expected one of: http, lambda"),
    (["run", "x.zip", "--as", "http", "--data", "{}"], "--data and --event are for --as lambda"),
    (["run", "x.zip", "--as", "lambda", "--data", "{not json"], "--data is not JSON"),
    (["run", "x.zip", "--as", "lambda", "--data", "{}", "--event", "e.json"], "give exactly one of --data, --event"),
    (["run", "x.zip", "--json"], "--json needs --as lambda with one of --data or --event"),
    (["schema", "--port", "1"], "No such option: --port"),
    (["version", "extra"], "unexpected extra argument"),
    (["nosuchcommand"], "No such command"),
])
def test_bad_usage_is_exit_2(tmp_path, args, says):
    plain = fnpack(*args, cwd=tmp_path)
    assert plain.code == 2, plain.stdout + plain.stderr
    assert says in plain.stderr and "Traceback" not in plain.stderr
    as_json = fnpack(*args, "--json", cwd=tmp_path)
    error = json_error(as_json, 2)
    assert error["error"] == "usage" and says in error["message"] + " " + (error["hint"] or "")
    assert not list(tmp_path.iterdir())  # nothing was created


def test_init_into_a_taken_folder_is_exit_2(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    result = fnpack("init", "taken", cwd=tmp_path)
    assert result.code == 2 and "taken already exists and is not an empty folder" in result.stderr


# --- rows 3 to 8: the build's own errors ------------------------------------------------------------------------


def test_spec_error_is_exit_3(tmp_path):
    plain = fnpack("build", str(tmp_path))
    assert plain.code == 3 and "no fnpack.yaml found" in plain.stderr
    assert json_error(fnpack("build", str(tmp_path), "--json"), 3)["error"] == "spec"


def test_model_error_is_exit_4(iris):
    (iris / "model.onnx").write_bytes(b"not a model")
    assert json_error(fnpack("build", str(iris), "--json"), 4)["error"] == "model"


def test_user_code_error_is_exit_5(iris):
    edit_spec(iris, features="nosuchmodule:extract")
    error = json_error(fnpack("build", str(iris), "--json"), 5)
    assert error["error"] == "user-code" and "nosuchmodule" in error["message"]


def test_dependency_error_is_exit_6(iris):
    edit_spec(iris, requirements=["numpy<2"])  # the runtime pins numpy 2
    assert json_error(fnpack("build", str(iris), "--json"), 6)["error"] == "dependency"


def test_smoke_test_failure_is_exit_8(iris):
    spec = yaml.safe_load((iris / "fnpack.yaml").read_text())
    spec["samples"][0]["expect"] = {"label": "virginica"}
    (iris / "fnpack.yaml").write_text(yaml.safe_dump(spec))
    assert json_error(fnpack("build", str(iris), "--json"), 8)["error"] == "smoke-test"


# --- row 7: over the size budget: zipped against zipped, in the unit given, real names in the hints -------------


def test_over_budget_report_compares_like_with_like(iris):
    (iris / "data").mkdir()
    (iris / "data" / "lookup.bin").write_bytes(os.urandom(3_000_000))  # incompressible: 3 MB zipped too
    edit_spec(iris, include=["data/**"])
    result = fnpack("build", str(iris), "--max-size", "20MB")
    assert result.code == 7, result.stdout + result.stderr
    message = result.stderr.splitlines()[0]
    assert re.fullmatch(r"error: the archive is too large: zipped \d\d\.\d MB is over the limit of 20 MB "
                        r"\(--max-size\)", message), message
    assert "MiB" not in result.stderr and "KiB" not in result.stderr  # MB, as --max-size was written
    breakdown = result.stderr.splitlines()[1]
    assert breakdown.startswith("  largest (zipped)  numpy 1") and "onnxruntime 1" in breakdown
    assert "data/lookup.bin  3.0 MB" in result.stderr  # zipped: random bytes do not compress
    hint = result.stderr[result.stderr.index("hint: "):]
    assert 'exclude: ["data/**"] in fnpack.yaml (zipped: data 3.0 MB)' in hint  # the real folder, by name
    assert "some_unused_folder" not in hint and "Drop the requirements" not in hint  # iris has none
    assert "Or pass a larger --max-size (now 20 MB zipped)." in hint

    as_json = json_error(fnpack("build", str(iris), "--max-size", "20MB", "--json"), 7)
    report = as_json["report"]
    assert (report["measure"], report["unit"], report["limit"]) == ("zipped", "MB", 20_000_000)
    assert report["packages"][0]["share"] == round(report["packages"][0]["zipped"] / report["total"], 4)
    assert report["excludable"] == [{"exclude": "data/**", "size": 3_000_000, "zipped": 3_000_000 + 76 + 2 * 15}]
    assert not (iris / "dist").exists() or not list((iris / "dist").glob("*.zip"))


def test_over_budget_in_the_specs_units_with_its_requirements(iris):
    edit_spec(iris, requirements=["pillow"], budget={"zipped": "10MiB", "unzipped": "0.05GB"})
    result = fnpack("build", str(iris))
    assert result.code == 7, result.stdout + result.stderr
    message = result.stderr.splitlines()[0]
    assert "zipped " in message and " MiB is over the limit of 10 MiB (budget.zipped in fnpack.yaml)" in message
    assert " GB is over the limit of 0.05 GB (budget.unzipped in fnpack.yaml)" in message
    assert "  largest (zipped)  " in result.stderr and "  largest (unzipped)  " in result.stderr
    assert "Drop the requirements the function does not use (zipped: pillow " in result.stderr
    assert "raise budget.zipped in fnpack.yaml (now 10 MiB zipped)" in result.stderr
    assert "raise budget.unzipped in fnpack.yaml (now 0.05 GB unzipped)" in result.stderr


# --- rows 9 to 11 ------------------------------------------------------------------------------------------------


def test_unwritable_output_is_exit_9(iris, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert json_error(fnpack("build", str(iris), "--out", str(blocker / "dist"), "--json"), 9)["error"] == "output"
    init = fnpack("init", "fresh", "--dir", str(blocker / "fresh"))
    assert init.code == 9 and "cannot create" in init.stderr and "Traceback" not in init.stderr


def test_bad_archive_is_exit_10(tmp_path, archives):
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"hello")
    assert json_error(fnpack("inspect", str(not_zip), "--json"), 10)["error"] == "archive"
    assert fnpack("run", str(tmp_path / "missing.zip"), "--port", "1").code == 10
    wrong = fnpack("inspect", str(archives["local"]), "--sha256", "0" * 64, "--json")
    assert "sha256 mismatch" in json_error(wrong, 10)["message"]


def test_function_that_cannot_start_is_exit_11(archives):
    env = {**os.environ, "IRIS_FAIL_AT_START": "1"}
    done = subprocess.run([sys.executable, "-m", "fnpack", "run", str(archives["local"]), "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 11, done.stdout + done.stderr
    # The function's own traceback is shown (it is the user's code), then one error and its hint.
    assert "RuntimeError: IRIS_FAIL_AT_START is set" in done.stderr and "hint: the traceback above" in done.stderr


# --- help texts ----------------------------------------------------------------------------------------------------


def _all_helps() -> dict[str, str]:
    """Every command's --help, rendered by the real entry point in one process (wide, so no wrapping)."""
    script = (
        "import sys, typer\n"
        "from fnpack.cli import app, main\n"
        "def walk(command, path):\n"
        "    yield path\n"
        "    for name, sub in sorted((getattr(command, 'commands', None) or {}).items()):\n"
        "        yield from walk(sub, path + [name])\n"
        "for path in walk(typer.main.get_command(app), []):\n"
        "    print('=== ' + ' '.join(path), flush=True)\n"
        "    sys.argv = ['fnpack', *path, '--help']\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    sys.stdout.flush()\n"
    )
    env = {**os.environ, "COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    helps = {}
    for block in done.stdout.split("=== ")[1:]:
        name, _, text = block.partition("\n")
        helps[name] = text
    return helps


def test_help_texts():
    helps = _all_helps()
    assert {"", "build", "inspect", "run", "init", "schema", "version"} <= set(helps)
    for name, text in helps.items():
        assert "Usage: fnpack" in text, name
        assert not re.search(r"<(bool|str|int|float|path|list\[str\])>", text), (name, text)  # no type tags
        assert not re.search(r"\w \.(\s|$)", text), (name, text)  # nothing eaten as markup ("Output folder .")
    build = helps["build"]
    out_line = next(line for line in build.splitlines() if "--out" in line)
    assert re.search(r"--out\s+-o\s+DIR\s+Output folder; default: PATH/dist\.", out_line), out_line
    assert "e.g. 45MB" in build and "(45MB)" not in build
    assert "Show an archive's manifest, handlers, model inputs and outputs" in helps["inspect"]
