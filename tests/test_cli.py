import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from flows import config
from tasks.params import TrainParams
from ops import cli
from tasks import idx
from tests.synthetic import write_mirror
from tests.prefect_homes import prefect_home


def _refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *args])
    assert exit_info.value.code == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "--epochs 0: Input should be greater than or equal to 1"),
        (["--batch-size", "0"], "--batch-size 0: Input should be greater than or equal to 1"),
        (["--learning-rate", "-0.1"], "--learning-rate -0.1: Input should be greater than 0"),
        (["--dataset", "cifar10"], "--dataset cifar10: Input should be 'mnist' or 'fashion_mnist'"),
        (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
        (["--train-limit", "0"], "--train-limit 0: Input should be greater than or equal to 1"),
        (["--lr-schedule", "step"], "--lr-schedule step: Input should be 'cosine' or 'constant'"),
        (["--seed", "4294967296"], "--seed 4294967296: Input should be less than or equal to 4294967295"),
        (["--batch-size", "9223372036854775808"],
         "--batch-size 9223372036854775808: Input should be less than or equal to 65536"),
        (["--learning-rate", "inf"], "--learning-rate inf: Input should be a finite number"),
        (["--learning-rate", "nan"], "--learning-rate nan: Input should be a finite number"),
        (["--artifacts-dir", ""], "--artifacts-dir : String should have at least 1 character"),
        (["--mirror", ""], "--mirror : String should have at least 1 character"),
        (["--artifacts-dir", "store-\udcff"], "--artifacts-dir store-\\xff: Input should be a valid string, unable to parse raw data"),
        (["--mirror", "m" * 5000], f"mirror {'m' * 60}... cannot be read: File name too long"),
    ],
)
def test_bad_option_is_one_line_exit_2(capsys, args, message):
    err = _refused(capsys, *args)
    assert message in err and len(err) < 300


def test_mirror_without_the_four_files(capsys, tmp_path):
    mirror = write_mirror(tmp_path)
    (mirror / "train-images-idx3-ubyte.gz").unlink()
    assert "has no train-images-idx3-ubyte" in _refused(capsys, "--mirror", str(mirror))


def test_malformed_idx_file(capsys, tmp_path):
    mirror = write_mirror(tmp_path, gzipped=False)
    idx.write(mirror / "t10k-images-idx3-ubyte", np.zeros((3, 28), dtype=np.uint8))
    assert "expected (N, 28, 28) images" in _refused(capsys, "--mirror", str(mirror))


def test_bad_input_starts_no_stage_and_no_prefect(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    probe = "import sys; from ops import cli\ntry: cli.main(['run', '--epochs', '0'])\nexcept SystemExit as e: print(e.code, 'prefect' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.split() == ["2", "False", "False"]
    assert not (tmp_path / "artifacts").exists()


@pytest.fixture(scope="module")
def server():
    """One Prefect server the module's command-line runs join (as they join `make serve`'s), where the
    temporary server each would start is not what a test is about: that start costs ~10 s a run."""
    from ops.temporary_server import TemporaryServer

    prefect_home(Path(os.environ["PREFECT_HOME"]))
    started = TemporaryServer()
    started.wait_until_healthy()
    yield started.api_url
    started.stop()


def _start_cli(tmp_path, *args, importtime=False, home="prefect-home", new_session=False, server=None):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / home)}
    env.pop("PREFECT_API_URL", None)
    if server is not None:
        env["PREFECT_API_URL"] = server
    else:  # the run starts a temporary server in that home
        prefect_home(tmp_path / home)
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.Popen(
        [sys.executable, *flags, "-m", "ops.cli", "run", *args, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        start_new_session=new_session,
    )


def _run_cli(tmp_path, *args, importtime=False, server=None):
    process = _start_cli(tmp_path, *args, importtime=importtime, server=server)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_command_runs_then_serves_everything_from_cache(tmp_path, mirror, server):
    args = ["--mirror", str(mirror), "--epochs", "2", "--batch-size", "16"]
    first = _run_cli(tmp_path, *args, server=server)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = _summary(first.stdout)
    assert {s["state"] for s in summary["stages"].values()} == {"Completed"}
    assert "epoch 1/2" in first.stderr and "epoch 2/2" in first.stderr
    # No word from TensorFlow's probe for a CUDA driver on a machine that has none.
    assert "cuInit" not in first.stderr and "Could not find cuda drivers" not in first.stderr
    assert (tmp_path / summary["report"]).is_file()
    # Nothing about the hook that counts a stage's tries, and TensorFlow's oneDNN note once at most.
    assert "count_attempts" not in first.stderr and first.stderr.count("oneDNN custom operations") <= 1

    again = _run_cli(tmp_path, *args, importtime=True, server=server)
    assert again.returncode == 0, again.stderr[-2000:]
    cached = _summary(again.stdout)
    assert {s["state"] for s in cached["stages"].values()} == {"Cached"}
    assert cached["metrics"] == summary["metrics"]
    # A fully cached run computes nothing, so it never imports TensorFlow.
    assert "| tensorflow" not in again.stderr and "| keras" not in again.stderr
    # The console script skips the interpreter's teardown (entry()), but only after
    # its log records reached the server: the run's last line is there.
    logs = httpx.post(f"{server}/logs/filter",
                      json={"logs": {"flow_run_id": {"any_": [cached["flow_run_id"]]}}}).json()
    assert any(log["message"].startswith("Finished in state Completed") for log in logs)
    # The first run's logs, as the UI shows them: the same.
    logs = httpx.post(f"{server}/logs/filter", json={"logs": {"flow_run_id": {"any_": [summary["flow_run_id"]]}},
                                                     "limit": 200}).json()
    assert any("epoch 2/2" in log["message"] for log in logs)
    assert not [log for log in logs if "count_attempts" in log["message"]]
    assert sum("oneDNN custom operations" in log["message"] for log in logs) <= 1


_AS_A_WORKER_RUNS_IT = """
import sys
from prefect import get_client
from prefect.flow_engine import run_flow
from prefect.logging.loggers import flow_run_logger
from flows.pipeline import mnist_pipeline

with get_client(sync_client=True) as client:
    flow_run = client.create_flow_run(mnist_pipeline, parameters={"mirror": sys.argv[1]})
print(flow_run.id, flush=True)
run_flow(mnist_pipeline, flow_run=flow_run, error_logger=flow_run_logger(flow_run))  # prefect.engine's call
"""


@pytest.mark.e2e
def test_a_run_from_the_ui_refused_on_purpose_ends_failed_in_one_line_without_prefects_traceback(tmp_path, server):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    env = {**os.environ, "PREFECT_API_URL": server}
    done = subprocess.run([sys.executable, "-c", _AS_A_WORKER_RUNS_IT, str(empty)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode != 0 and "FailedRun" in done.stderr  # as a worker's flow run process ends
    run_id = done.stdout.split()[0]
    run = httpx.get(f"{server}/flow_runs/{run_id}").json()
    assert run["state"]["type"] == "FAILED"
    assert run["state"]["message"] == f"mirror {empty} has no train-images-idx3-ubyte (nor train-images-idx3-ubyte.gz)"
    logs = httpx.post(f"{server}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).json()
    assert any(log["message"].startswith("Finished in state Failed('mirror ") for log in logs)
    assert not [log for log in logs if "Engine execution exited" in log["message"] or "Traceback" in log["message"]]


@pytest.mark.e2e
def test_failed_stage_exits_1_naming_it(tmp_path, server):
    # A folder name that would drive the terminal, were it printed as it is.
    mirror = write_mirror(tmp_path / "mirror\x1b]0;title\x07\x1b[2J", gzipped=False)
    labels = mirror / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-10])  # the header is fine, the body is short
    result = _run_cli(tmp_path, "--mirror", str(mirror), "--epochs", "1", server=server)
    assert result.returncode == cli.EXIT_FAILED
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-pipeline: error: stage download failed:")
    assert "t10k-labels-idx1-ubyte holds 90 bytes of data, its header promises 100" in last
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and "mirror\\x1b]0;title\\x07" in last
    summary = _summary(result.stdout)
    assert summary["state"] == "Failed" and summary["stages"]["download"]["state"] == "Failed"
    # An expected failure: its message says all, no traceback on the terminal.
    assert "Traceback" not in result.stderr
    verbose = _run_cli(tmp_path, "--mirror", str(mirror), "--epochs", "1", "--verbose", server=server)
    assert verbose.returncode == cli.EXIT_FAILED and "Traceback" in verbose.stderr


@pytest.mark.e2e
def test_a_promotion_that_cannot_be_written_is_one_line_and_takes_the_runs_line_back(tmp_path, mirror, server):
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "champions").write_text("a file where the champions' folder should be")
    result = _run_cli(tmp_path, "--mirror", str(mirror), "--epochs", "1", "--accuracy-threshold", "0", server=server)
    assert result.returncode == cli.EXIT_FAILED
    assert result.stderr.strip().splitlines()[-1] == (
        "mnist-pipeline: error: flow failed: cannot write the mnist champion record artifacts/champions/mnist.json: "
        "Not a directory")
    assert "Traceback" not in result.stderr
    assert not (store / "runs.jsonl").read_text() and not list((store / "runs").iterdir())


@pytest.mark.e2e
@pytest.mark.parametrize("epochs_b, trained_states", [
    (3, ["Cached", "Completed"]),  # same inputs: one run trains, the other waits for it
    (2, ["Completed", "Completed"]),  # different training: each trains, sharing the data stages
])
def test_concurrent_runs_compute_shared_stages_once(tmp_path, mirror, epochs_b, trained_states, server):
    base = ["--mirror", str(mirror), "--batch-size", "16"]
    # One server, one artifact store (the working directory): only the store's locks keep them apart.
    runs = [_start_cli(tmp_path, *base, "--epochs", str(epochs), home=f"home-{i}", server=server)
            for i, epochs in enumerate([3, epochs_b])]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    summaries = [_summary(out) for out, _ in outputs]
    for stage in summaries[0]["stages"]:
        states = sorted(summary["stages"][stage]["state"] for summary in summaries)
        expected = ["Cached", "Completed"] if stage in ("download", "preprocess") else trained_states
        assert states == expected, (stage, states)
    assert [s["train"]["epochs_run"] for s in summaries] == [3, epochs_b]


@pytest.mark.e2e
def test_run_killed_during_training_resumes_where_it_stopped(tmp_path, server):
    mirror = write_mirror(tmp_path / "mirror", train=2000, test=200)
    args = ["--mirror", str(mirror), "--epochs", "5", "--batch-size", "16"]
    # Its own session, so SIGKILL takes Prefect's temporary server down with it.
    doomed = _start_cli(tmp_path, *args, new_session=True, server=server)
    for line in doomed.stderr:
        if "epoch 2/5" in line:
            os.killpg(doomed.pid, signal.SIGKILL)
            break
    assert doomed.wait(timeout=60) == -signal.SIGKILL

    result = _run_cli(tmp_path, *args, server=server)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = _summary(result.stdout)
    assert [s["state"] for s in summary["stages"].values()] == ["Cached", "Cached", "Completed", "Completed", "Completed"]
    assert (summary["train"]["resumed_from_epoch"], summary["train"]["epochs_run"]) == (2, 3)
    train_entry = tmp_path / summary["stages"]["train"]["artifact"]
    assert list(pd.read_csv(train_entry / "history.csv")["epoch"]) == [1, 2, 3, 4, 5]
    assert not list((tmp_path / "artifacts" / "train" / ".work").glob("*/*"))
    assert not list((tmp_path / "artifacts" / "train").glob(".tmp-*"))  # the killed run's half entry


def test_paths_outside_allowed_roots_are_refused(capsys, tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    mirror = write_mirror(allowed / "mirror")
    monkeypatch.setenv("MNIST_PIPELINE_ALLOWED_ROOTS", str(allowed))
    assert "outside the folders this worker allows" in _refused(
        capsys, "--mirror", str(allowed / ".." / "elsewhere"))
    assert "outside the folders this worker allows" in _refused(
        capsys, "--mirror", str(mirror), "--artifacts-dir", str(tmp_path / "store"))
    (allowed / "link").symlink_to("/etc")
    assert "outside the folders" in _refused(
        capsys, "--mirror", str(mirror), "--artifacts-dir", str(allowed / "link" / "store"))


@pytest.mark.parametrize("inside", ["runs", "champions", "download", "train/.work", "runs.jsonl"])
def test_a_link_inside_the_store_that_leads_outside_is_refused(capsys, tmp_path, monkeypatch, inside):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    mirror = write_mirror(allowed / "mirror")
    (allowed / "store" / inside).parent.mkdir(parents=True, exist_ok=True)
    outside.mkdir()
    (allowed / "store" / inside).symlink_to(outside)
    monkeypatch.setenv("MNIST_PIPELINE_ALLOWED_ROOTS", str(allowed))
    assert _refused(capsys, "--mirror", str(mirror), "--artifacts-dir", str(allowed / "store")) == (
        f"mnist-pipeline: error: --artifacts-dir {allowed / 'store'} holds {allowed / 'store' / inside}, a link to "
        f"{outside}, which is outside the folders this worker allows ({allowed}); to allow it, add its folder to "
        "MNIST_PIPELINE_ALLOWED_ROOTS (folders separated by ':') before `make serve`\n")
    # A link that stays inside the allowed folders is the user's own business.
    (allowed / "store" / inside).unlink()
    (allowed / "store" / inside).symlink_to(allowed / "mirror")
    assert cli.validate(cli._parser().parse_args(["run", "--mirror", str(mirror), "--artifacts-dir",
                                                  str(allowed / "store")]))["artifacts_dir"] == str(allowed / "store")


def test_the_local_copy_of_a_bucket_is_checked_like_any_store(capsys, tmp_path, monkeypatch):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    mirror = write_mirror(allowed / "mirror")
    cache, outside_roots = allowed / ".s3-cache", f"outside the folders this worker allows ({allowed})"
    (cache / "team" / "mnist").mkdir(parents=True)
    outside.mkdir()
    (cache / "team" / "mnist" / "runs").symlink_to(outside)
    monkeypatch.setenv("MNIST_PIPELINE_ALLOWED_ROOTS", f"{allowed}:s3://team/mnist")
    monkeypatch.setenv("MNIST_PIPELINE_S3_CACHE", str(cache))
    assert _refused(capsys, "--mirror", str(mirror), "--artifacts-dir", "s3://team/mnist").startswith(
        f"mnist-pipeline: error: --artifacts-dir s3://team/mnist: {cache / 'team' / 'mnist'} holds "
        f"{cache / 'team' / 'mnist' / 'runs'}, a link to {outside}, which is {outside_roots}")
    # A copy where the cache itself leads out, not made by the check.
    (cache / "team" / "mnist" / "runs").unlink()
    (cache / "team").rename(outside / "team")
    (cache / "team").symlink_to(outside / "team")
    assert outside_roots in _refused(capsys, "--mirror", str(mirror), "--artifacts-dir", "s3://team/mnist/two")
    assert not (outside / "team" / "mnist" / "two").exists()
    # A bucket's copy given by its folder is that bucket: allowed only if the bucket is.
    (cache / "other" / "stolen").mkdir(parents=True)
    (cache / "other" / "stolen" / ".remote").write_text("s3://other/stolen\n")
    assert "s3://other/stolen is outside the buckets this worker allows (s3://team/mnist)" in _refused(
        capsys, "--mirror", str(mirror), "--artifacts-dir", str(cache / "other" / "stolen"))


def test_a_run_from_the_ui_is_refused_in_one_line_naming_the_parameter(tmp_path, monkeypatch):
    from flows.pipeline import mnist_pipeline

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("MNIST_PIPELINE_ALLOWED_ROOTS", f"{allowed}:/usr/share/datasets")
    state = mnist_pipeline.fn(mirror="/tmp/elsewhere", artifacts_dir=str(allowed / "store"))
    assert state.is_failed()
    assert state.message == (
        f"mirror /tmp/elsewhere is outside the folders this worker allows ({allowed}, /usr/share/datasets); to allow "
        "it, add its folder to MNIST_PIPELINE_ALLOWED_ROOTS (folders separated by ':') before `make serve`")


def test_an_empty_split_is_refused(capsys, tmp_path):
    mirror = write_mirror(tmp_path / "mirror", test=0)
    assert f"mirror {mirror} holds no test images" in _refused(capsys, "--mirror", str(mirror))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return []


def _lost(process: subprocess.Popen) -> str:
    """What a run that outlived a signal shows: its threads' signal masks, then their stacks (it is ended)."""
    masks = []
    for status in Path(f"/proc/{process.pid}/task").glob("*/status"):
        fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        masks.append(" ".join(f"{k}={fields[k]}" for k in ("Name", "SigBlk", "SigIgn", "SigCgt") if k in fields))
    process.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: the stacks go to stderr
    _, stderr = process.communicate(timeout=60)
    return "signal masks by thread:\n" + "\n".join(masks) + "\nits stderr's end:\n" + stderr[-6000:]


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """SIGINT as an interactive shell leaves it, for the processes the test starts.

    A suite started as a background job (`make test &`, a CI script's `cmd &`) runs with
    SIGINT ignored, and a started process inherits that; a run then rightly leaves it
    ignored (ops/cli.py), as a background job's Ctrl-C is not its own. A handler, unlike
    an ignored signal, goes back to SIGINT's default when a child starts its program.
    """
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_the_temporary_server_ends_with_the_run(tmp_path, mirror, sig, monkeypatch, ctrl_c_as_in_a_terminal):
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a SIGABRT dumps every thread's stack (see _lost)
    process = _start_cli(tmp_path, "--mirror", str(mirror), "--epochs", "1000", "--batch-size", "16")
    for line in process.stderr:  # the flow has begun: the server is up and in use
        if "Beginning flow run" in line:
            break
    [server] = [c for c in _children(process.pid) if "uvicorn" in open(f"/proc/{c}/cmdline").read()]
    process.send_signal(sig)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run outlived {sig.name}; {_lost(process)}") from None
    deadline = time.monotonic() + 10
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server), f"the temporary server (pid {server}) outlived the run's {sig.name}"


@pytest.mark.e2e
def test_a_run_on_a_temporary_server_prints_no_link_into_it(tmp_path, mirror):
    done = _run_cli(tmp_path, "--mirror", str(mirror), "--epochs", "1", "--batch-size", "16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _summary(done.stdout)["server"]["temporary"] is True
    # Its server is gone when the run ends: a link into its UI would be dead; what to do instead is said once.
    assert "View at http" not in done.stderr and "/runs/flow-run/" not in done.stderr
    assert done.stderr.count("this run was not recorded on a lasting Prefect server") == 1
    assert done.stderr.rstrip().endswith("`make serve` keeps every run in the UI, and runs then report there")


@pytest.mark.e2e
def test_mirror_file_still_being_copied_is_retried(tmp_path, server):
    mirror = write_mirror(tmp_path / "mirror", gzipped=False)
    images = mirror / "train-images-idx3-ubyte"
    whole = images.read_bytes()
    images.write_bytes(whole[: len(whole) // 2])  # the copy has not finished yet
    process = _start_cli(tmp_path, "--mirror", str(mirror), "--epochs", "1", "--batch-size", "16", server=server)
    for line in process.stderr:
        if "Retry 1/" in line:
            images.write_bytes(whole)  # ... and now it has
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    download = _summary(stdout)["stages"]["download"]
    assert download["state"] == "Completed" and download["attempts"] == 2


def test_the_operations_guide_lists_every_flow_parameter_with_its_description():
    import re

    from flows.pipeline import mnist_pipeline

    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|$", guide.split("| field | description |")[1].split("\n\n")[0],
                            re.MULTILINE))
    schema = mnist_pipeline.parameters.model_dump()["properties"]
    assert table == {name: field["description"] for name, field in schema.items()}


@pytest.mark.parametrize("setting, message", [
    ('{"mirror": "/nowhere"}', "MNIST_PIPELINE_NIGHTLY: mirror /nowhere is not a directory"),
    ('{"epochs": 0}', "MNIST_PIPELINE_NIGHTLY: epochs 0: Input should be greater than or equal to 1"),
    ('["mirror"]', "MNIST_PIPELINE_NIGHTLY is not a JSON object of parameters (not a JSON object)"),
    ('{"mirror": ', "MNIST_PIPELINE_NIGHTLY is not a JSON object of parameters (Expecting value"),
])
def test_nightly_parameters_are_checked_at_serve(monkeypatch, setting, message):
    from ops import deployments

    monkeypatch.setenv("MNIST_PIPELINE_NIGHTLY", setting)
    with pytest.raises(SystemExit) as refused:
        deployments.nightly_parameters()
    assert str(refused.value).startswith(message)


def test_nightly_parameters_from_the_setting(monkeypatch, mirror):
    from ops import deployments

    monkeypatch.setenv("MNIST_PIPELINE_NIGHTLY", f'{{"mirror": "{mirror}", "epochs": 3}}')
    assert deployments.nightly_parameters() == {"mirror": str(mirror), "epochs": 3}


def test_the_flow_and_the_command_line_take_the_configs_fields():
    from flows.config import PipelineConfig
    from flows.pipeline import mnist_pipeline

    fields = {name: field.default for name, field in PipelineConfig.model_fields.items()}
    schema = mnist_pipeline.parameters.model_dump()["properties"]
    assert list(schema) == list(fields)
    assert {name: schema[name]["default"] for name in fields} == {**fields, "mirror": ""}  # the form's empty field
    assert {name: schema[name]["description"] for name in fields} == {
        name: field.description for name, field in PipelineConfig.model_fields.items()}
    options = vars(cli._parser().parse_args(["run"]))
    assert {name: options[name] for name in fields} == fields


def test_a_command_line_run_beats_within_the_zombie_automations_window(monkeypatch):
    """A run reporting to `make serve`'s server is not marked Crashed while it lives: Prefect's default is 180 s."""
    from ops import deployments

    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"}
    monkeypatch.setattr(os, "environ", environment)
    cli._environment()
    window = deployments._zombie_automation().trigger.within.total_seconds()
    assert 2 * int(os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) < window


def test_a_command_line_run_sends_prefect_no_telemetry_unless_the_environment_says_otherwise(monkeypatch):
    """Prefect's client-side telemetry (on in a terminal by default) stays off, as the server's analytics do."""
    from prefect._internal.analytics.enabled import is_telemetry_enabled

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "DO_NOT_TRACK"})
    monkeypatch.setattr("prefect._internal.analytics.enabled.is_ci_environment", lambda: False)
    assert is_telemetry_enabled()
    cli._environment()
    assert not is_telemetry_enabled()
    monkeypatch.setattr(os, "environ", {**os.environ, "DO_NOT_TRACK": "0"})
    cli._environment()
    assert os.environ["DO_NOT_TRACK"] == "0"



def test_every_command_keeps_prefect_at_home_and_untracked(monkeypatch, tmp_path):
    """predict imports Prefect (the champion's lock), so the settings come before any command."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "DO_NOT_TRACK"})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["runs", "--artifacts-dir", str(tmp_path)]) == 0
    assert os.environ["DO_NOT_TRACK"] == "1"


@pytest.mark.parametrize("argv, epochs", [(["--recipe", "tutorial"], 10), (["--recipe", "tutorial", "--epochs", "3"], 3),
                                          (["--epochs", "3", "--recipe", "tutorial"], 3)])
def test_the_tutorial_recipe_is_one_option_and_the_options_given_stand_over_it(monkeypatch, argv, epochs):
    seen = {}
    monkeypatch.setattr(cli, "run", lambda parameters, *rest, **options: seen.update(parameters) or 0)
    assert cli.main(["run", *argv]) == 0
    assert {k: seen[k] for k in ("epochs", "batch_size", "learning_rate", "lr_schedule", "validation_split")} == {
        "epochs": epochs, "batch_size": 32, "learning_rate": 0.001, "lr_schedule": "constant", "validation_split": 0.0}
    cli.main(["run"])  # without it, the project's defaults
    assert (seen["batch_size"], seen["lr_schedule"], seen["validation_split"]) == (
        TrainParams.model_fields['batch_size'].default, TrainParams.model_fields['lr_schedule'].default, config.DEFAULT_VALIDATION_SPLIT)


def test_the_tutorial_recipes_help_shows_its_settings_as_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--recipe", "tutorial", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE Examples per training step, 1 to 65536. (default: 32)" in shown
    assert "as the tutorial does. (default: constant)" in shown
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert f"1 to 65536. (default: {TrainParams.model_fields['batch_size'].default})" in " ".join(capsys.readouterr().out.split())
    # Read ahead or not, a bad recipe is refused in the parser's one line.
    assert _refused(capsys, "--recipe").startswith("mnist-pipeline: error: argument --recipe: expected one argument")
    assert "invalid choice: 'nope'" in _refused(capsys, "--recipe", "nope")


@pytest.fixture
def interrupted(ctrl_c_as_in_a_terminal):
    """The run's interrupt flag, and SIGINT's handler, as they were, after the test."""
    from engine import retries

    yield retries
    retries.INTERRUPTED.clear()


def test_an_interrupted_run_retries_nothing_and_starts_no_further_stage(interrupted):
    from types import SimpleNamespace

    from flows.runner import StageRunner

    transient = SimpleNamespace(data=interrupted.TransientError("a read error"))
    assert interrupted.worth_retrying(None, None, transient)
    with pytest.raises(KeyboardInterrupt):
        interrupted.interrupt(signal.SIGINT, None)
    # A Ctrl-C that Python turned into another error (3.11, a class being made) is not retried away ...
    assert not interrupted.worth_retrying(None, None, transient)
    # ... and whatever it surfaced as, the next stage does not start.
    with pytest.raises(KeyboardInterrupt):
        StageRunner.__new__(StageRunner)(None)


def test_a_ctrl_c_the_flow_turned_into_a_failure_still_ends_the_run_as_interrupted(interrupted, monkeypatch):
    import flows.pipeline
    from prefect.states import Failed

    def flow(**parameters):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while a class is made (say) ...
        except KeyboardInterrupt as interrupt:  # ... which Python 3.11 reports as a RuntimeError
            return Failed(data=RuntimeError("Error calling __set_name__ on 'Field' instance 'logger'"),
                          message=str(interrupt))
        raise AssertionError("no SIGINT handler raised")

    monkeypatch.setattr(flows.pipeline, "mnist_pipeline", flow)
    # As if `make serve` answered: no temporary server is started, and the flow above reaches none.
    monkeypatch.setattr("ops.temporary_server.served_api_url", lambda: "http://127.0.0.1:9/api")
    with pytest.raises(KeyboardInterrupt):
        cli.run(config.PipelineConfig().model_dump(), as_json=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler put back


def test_a_run_after_an_interrupted_one_in_the_same_process_is_not_taken_for_interrupted(interrupted, monkeypatch):
    import flows.pipeline
    from prefect.states import Failed

    interrupted.INTERRUPTED.set()  # an earlier run's Ctrl-C, in a process that runs again (a notebook, say)
    monkeypatch.setattr(flows.pipeline, "mnist_pipeline",
                        lambda **parameters: Failed(data=OSError("the store is read-only"), message="failed"))
    monkeypatch.setattr("ops.temporary_server.served_api_url", lambda: "http://127.0.0.1:9/api")
    assert cli.run(config.PipelineConfig().model_dump(), as_json=True) == cli.EXIT_FAILED


@pytest.mark.parametrize("variable, value", [("MNIST_PIPELINE_GC_KEEP_RUNS", "abc"),
                                             ("MNIST_PIPELINE_STAGE_RETRIES", "-1"),
                                             ("MNIST_PIPELINE_RETRY_DELAYS_S", "1,x"),
                                             ("MNIST_PIPELINE_REDIS_LOCK_TTL_S", "nan")])
def test_a_bad_setting_in_the_environment_is_one_line_naming_it(variable, value, tmp_path):
    env = {**os.environ, variable: value}
    for command in (["runs", "--artifacts-dir", str(tmp_path)], ["run", "--epochs", "1"]):
        done = subprocess.run([sys.executable, "-m", "ops.cli", *command], env=env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"mnist-pipeline: error: {variable}="), \
            done.stderr


@pytest.mark.parametrize("command", [["runs"], ["runs", "--json"], ["runs", "--all"], ["store"], ["store", "--all"],
                                     ["gc"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(command, tmp_path):
    from engine import runlog

    store = tmp_path / "artifacts"
    store.mkdir()
    for n in range(3000):  # more than a pipe holds
        runlog.append(str(store), {"flow_run_id": f"run-{n}", "dataset": "mnist", "test_accuracy": 0.9,
                                   "gate_reason": "x" * 40})
    for n in range(500):
        (store / "train" / f".tmp-{n:016x}-00000000").mkdir(parents=True)
    done = subprocess.run(["bash", "-c", f'"$0" -m ops.cli {" ".join(command)} --artifacts-dir "$1" | head -3;'
                           ' echo "status ${PIPESTATUS[0]}"', sys.executable, str(store)],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "status 0", done.stderr
    assert len(done.stdout.splitlines()) == (2 if "--json" in command else 4)  # JSON is one line
    assert "Error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    if command in (["runs"], ["store"], ["gc"]):  # piped: 120 columns, no colours
        assert max(map(len, done.stdout.splitlines())) <= cli.PIPED_WIDTH and "\x1b" not in done.stdout


def _logged(store, **line):
    from engine import runlog

    runlog.append(str(store), {"dataset": "mnist", "epochs": 10, "batch_size": 128, "learning_rate": 0.002,
                               "test_accuracy": 0.9912, "gate_passed": True, "finished": "2026-12-06T05:22:28+00:00",
                               **line})


def test_runs_fits_one_screen_newest_last_by_the_names_the_ui_shows(tmp_path, capsys):
    _logged(tmp_path, flow_run_id="0a1b2c3d-0000-4000-8000-000000000000")  # logged before runs had names
    _logged(tmp_path, flow_run_id="1" * 36, run_name="crimson-fox", dataset="fashion_mnist", gate_passed=False,
            gate_reason="test accuracy 0.9000 is below the threshold " + "x" * 300, test_accuracy=0.9)
    _logged(tmp_path, flow_run_id="2" * 36, run_name="a-" + "very-" * 40 + "long-name", train_limit=1000)
    assert cli.main(["runs", "--artifacts-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 120 and len(lines) == 4
    assert lines[0].split() == ["when", "run", "dataset", "epochs", "batch", "lr", "test", "accuracy", "gate"]
    assert lines[1].split()[2:] == ["0a1b2c3d", "mnist", "10", "128", "0.002", "0.9912", "promoted"]
    assert lines[2].split()[2:] == ["crimson-fox", "fashion_mnist", "10", "128", "0.002", "0.9000", "not", "promoted"]
    assert lines[3].split()[2].startswith("a-very-very-") and lines[3].endswith("0.9912  promoted")
    # The rest with --all, as wide as it takes, and everything with --json.
    assert cli.main(["runs", "--artifacts-dir", str(tmp_path), "--all"]) == 0
    wide = capsys.readouterr().out
    assert "x" * 300 in wide and "1" * 36 in wide and "NaN" not in wide
    assert wide.splitlines()[0].split() == runlog_columns()
    assert cli.main(["runs", "--artifacts-dir", str(tmp_path), "--json"]) == 0
    assert [run.get("run_name") for run in json.loads(capsys.readouterr().out)] == [
        None, "crimson-fox", "a-" + "very-" * 40 + "long-name"]


def runlog_columns() -> list[str]:
    from engine import runlog

    return runlog.COLUMNS


def test_the_width_is_the_terminals_where_there_is_one(tmp_path, monkeypatch, capsys):
    _logged(tmp_path, flow_run_id="1" * 36, run_name="crimson-fox", gate_reason="r" * 300)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("COLUMNS", "70")
    assert cli.main(["runs", "--artifacts-dir", str(tmp_path)]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 70


@pytest.mark.parametrize("command", ["runs", "store", "gc", "predict"])
def test_every_option_of_the_commands_that_read_the_store_says_what_it_does(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--artifacts-dir DIR the artifact store: a folder, or s3://bucket/prefix (default: artifacts)" in shown
    assert "--json print JSON (every field, every row) instead of a table" in shown
    if command in ("runs", "store"):
        assert "--all every setting and figure" in shown or "--all every path under the store" in shown


def test_logged_values_and_file_names_print_no_terminal_escapes(tmp_path, capsys):
    from engine import runlog

    runlog.append(str(tmp_path), {"flow_run_id": "run-\x1b]0;pwned\x07", "dataset": "mnist\x1b[2J",
                                  "test_accuracy": 0.9})
    assert cli.main(["runs", "--artifacts-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "mnist\\x1b[2J" in out
