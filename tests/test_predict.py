import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ops import cli
from flows.config import train_params
from tasks import predict
from tasks.refs import ModelRef
from flows.stages import download_dataset, preprocess_dataset, train_model
from engine.store import ArtifactStore
from tests.synthetic import glyph, write_glyph_mirror


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("glyphs")
    store = str(folder / "artifacts")
    raw = download_dataset.fn(store, "mnist", str(write_glyph_mirror(folder / "mirror")))
    data = preprocess_dataset.fn(store, raw)
    model = train_model.fn(store, data, train_params(epochs=4, batch_size=16))
    return model.at(store).model_file


def test_to_mnist_centres_white_ink_on_black():
    paper = np.full((280, 280), 255.0)
    paper[40:120, 200:230] = 0.0  # a dark bar near the top right
    image = predict.to_mnist(paper)
    assert image.shape == (28, 28, 1) and image.dtype == np.float32
    assert image[0, 0, 0] == 0.0 and image.max() == pytest.approx(1.0, abs=0.05)
    rows, cols = np.nonzero(image[..., 0] > 0.5)
    assert abs(rows.mean() - 13.5) < 2 and abs(cols.mean() - 13.5) < 2
    assert rows.max() - rows.min() + 1 <= 20


def test_predict_classifies_typed_digits_at_any_size(model_path, tmp_path, capsys):
    rng = np.random.default_rng(42)
    files = []
    for digit in range(10):
        for size, paper in ((28, False), (280, True)):
            path = tmp_path / f"{digit}-{size}.png"
            Image.fromarray(glyph(digit, size, rng, ink_on_paper=paper)).convert("RGB").save(path)
            files.append((digit, path))
    assert cli.main(["predict", *[str(p) for _, p in files], "--model", str(model_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == {"path": str(model_path)}
    results = summary["predictions"]
    right = sum(r["class"] == digit for (digit, _), r in zip(files, results))
    assert right >= 0.9 * len(files)
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-3 for r in results)


def test_non_image_is_refused_in_one_line(model_path, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert cli.main(["predict", str(text), "--model", str(model_path)]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.png is not an image" in err


def _digit(tmp_path, digit: int = 3, size: int = 64) -> Path:
    path = tmp_path / f"digit-{digit}.png"
    Image.fromarray(glyph(digit, size, np.random.default_rng(digit))).save(path)
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_without_a_champion_the_message_says_what_to_do(tmp_path, capsys):
    assert cli.main(["predict", str(_digit(tmp_path)), "--artifacts-dir", str(tmp_path)]) == cli.EXIT_INVALID
    assert "no mnist champion" in _one_line(capsys)


@pytest.fixture
def champion(model_path, tmp_path):
    """A store whose mnist champion is the glyph model, moved away from where it was trained."""
    import shutil

    from flows import gate
    from tasks.refs import MetricsRef, ModelRef

    store = tmp_path / "moved-store"
    shutil.copytree(model_path.parent.parent.parent, store)
    fingerprint = model_path.parent.name
    model = ModelRef(stage="train", fingerprint=fingerprint, epochs_run=4, epoch_seconds=[1.0], device="CPU",
                     batch_size=16, train_count=1, validation_count=1, validated_on="validation",
                     validation_accuracy=0.99, validation_loss=0.1)
    metrics = MetricsRef(stage="evaluate", fingerprint="0" * 16, test_accuracy=0.99, test_loss=0.1, test_count=1,
                         test_sha256="0" * 64)
    gate.promote(str(store), "mnist", model, metrics, "run-1")
    return store


def test_predict_with_the_champion_loads_no_prefect(champion, tmp_path):
    import subprocess
    import sys

    probe = (f"import sys; from ops import cli; code = cli.main(['predict', {str(_digit(tmp_path))!r}, "
             f"'--artifacts-dir', {str(champion)!r}]); print(code, 'prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.stdout.splitlines()[-1] == "0 False", done.stdout + done.stderr[-2000:]


def test_predict_finds_the_champion_in_a_moved_store(champion, tmp_path, capsys):
    assert cli.main(["predict", str(_digit(tmp_path)), "--artifacts-dir", str(champion), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predictions"][0]["class"] == 3
    # The model it used: the champion, by the fingerprint its record holds, at its place in the moved store.
    fingerprint = json.loads((champion / "champions" / "mnist.json").read_text())["model"]
    assert summary["model"] == {"dataset": "mnist", "fingerprint": fingerprint,
                                "path": str(champion / "train" / fingerprint / ModelRef.MODEL)}
    assert cli.main(["predict", str(_digit(tmp_path)), "--artifacts-dir", str(champion)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model: the mnist champion {fingerprint} ({champion / 'train' / fingerprint / ModelRef.MODEL})"
    assert lines[1].startswith(f"{tmp_path / 'digit-3.png'}: 3 (")


def test_a_swapped_champion_model_is_refused(champion, model_path, tmp_path, capsys):
    entry = champion / "train" / model_path.parent.name
    (entry / ModelRef.MODEL).write_bytes((entry / ModelRef.MODEL).read_bytes() + b"\0")
    assert cli.main(["predict", str(_digit(tmp_path)), "--artifacts-dir", str(champion)]) == cli.EXIT_INVALID
    assert "the mnist champion's model cannot be trusted: " in _one_line(capsys)


@pytest.mark.parametrize("record", ["{\"model\": \"0123", "42", '{"model": "../../x", "test_accuracy": 1, "flow_run_id": "r"}'])
def test_a_damaged_champion_record_is_one_line(champion, tmp_path, capsys, record):
    (champion / "champions" / "mnist.json").write_text(record)
    assert cli.main(["predict", str(_digit(tmp_path)), "--artifacts-dir", str(champion)]) == cli.EXIT_INVALID
    assert f"the mnist champion record {champion / 'champions' / 'mnist.json'} is damaged" in _one_line(capsys)


@pytest.mark.parametrize("model", ["missing.keras", "notes.keras", "lambda.keras"])
def test_a_model_keras_will_not_load_is_one_line(tmp_path, capsys, model):
    import keras

    (tmp_path / "notes.keras").write_text("not a model")
    # A Lambda layer holds code of its own: safe_mode refuses to load it.
    keras.Sequential([keras.Input(shape=(28, 28, 1)), keras.layers.Lambda(lambda x: x * 2)]).save(
        tmp_path / "lambda.keras")
    assert cli.main(["predict", str(_digit(tmp_path)), "--model", str(tmp_path / model)]) == cli.EXIT_INVALID
    err = _one_line(capsys)
    assert ("no model file at" if model == "missing.keras" else "cannot load the model") in err
    if model == "lambda.keras":
        assert "safe_mode" in err


def _prepared(path: Path) -> np.ndarray:
    return predict.prepare(path)


def test_dark_strokes_on_a_transparent_background(tmp_path):
    gray = glyph(8, 64, np.random.default_rng(1), ink_on_paper=True)
    Image.fromarray(gray).save(tmp_path / "plain.png")
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255 - gray  # black ink, opaque where drawn, transparent elsewhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert np.abs(_prepared(tmp_path / "alpha.png") - _prepared(tmp_path / "plain.png")).max() < 0.02


def test_sixteen_bit_grey(tmp_path):
    gray = glyph(8, 64, np.random.default_rng(2))
    Image.fromarray(gray).save(tmp_path / "plain.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.abs(_prepared(tmp_path / "deep.png") - _prepared(tmp_path / "plain.png")).max() < 0.02


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.fromarray(glyph(7, 64, np.random.default_rng(3)))
    upright.save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    assert np.abs(_prepared(tmp_path / "phone.png") - _prepared(tmp_path / "plain.png")).max() < 0.02


@pytest.mark.parametrize("shade", [0, 255, 128])
def test_a_blank_image_is_refused(model_path, tmp_path, capsys, shade):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), shade, dtype=np.uint8)).save(blank)
    assert cli.main(["predict", str(blank), "--model", str(model_path)]) == cli.EXIT_INVALID
    assert f"{blank} is blank" in _one_line(capsys)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims `width` x `height` pixels: what a decoder sees before decoding."""
    import struct
    import zlib

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [8000, 12000, 20000, 30000])
def test_too_many_pixels_is_refused_before_decoding(model_path, tmp_path, capsys, side):
    huge = _png_claiming(tmp_path / "huge.png", side, side)
    assert cli.main(["predict", str(huge), "--model", str(model_path)]) == cli.EXIT_INVALID
    assert _one_line(capsys) == (f"mnist-pipeline: error: {huge} has {side}x{side} pixels, more than the "
                                 "50,000,000 this command takes\n")


def test_invert_overrides_what_the_border_suggests(model_path, tmp_path, capsys):
    rng = np.random.default_rng(7)
    dark_on_light = tmp_path / "three.png"
    Image.fromarray(glyph(3, 280, rng, ink_on_paper=True)).save(dark_on_light)

    def seen(*option: str) -> list:
        assert cli.main(["predict", str(dark_on_light), "--model", str(model_path), "--json", *option]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"][0]["probabilities"]

    assert seen() == seen("--invert", "auto") == seen("--invert", "yes")
    # Not inverted, the paper is the "ink": the digit's box is the whole page, another image altogether.
    assert seen("--invert", "no") != seen()
    assert np.array_equal(predict.prepare(dark_on_light, invert=True), predict.prepare(dark_on_light))
    assert not np.array_equal(predict.prepare(dark_on_light, invert=False), predict.prepare(dark_on_light))


def test_a_fifo_a_tiff_and_a_tiny_image_are_refused_in_one_line(model_path, tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would wait for a writer for ever
    tiff = tmp_path / "lab.tiff"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tiff)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.eye(3, dtype=np.uint8) * 255).save(tiny)
    for path, words in ((fifo, "is not a regular file"), (tiff, "is not an image PNG or JPEG can be read from"),
                        (tiny, "has 3x3 pixels, too few to hold a digit")):
        assert cli.main(["predict", str(path), "--model", str(model_path)]) == cli.EXIT_INVALID
        assert f"{path} {words}" in _one_line(capsys)


def test_a_model_of_another_shape_is_refused_in_one_line(tmp_path, capsys):
    import keras

    other = keras.Sequential([keras.Input(shape=(32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    other.save(tmp_path / "other.keras")
    assert cli.main(["predict", str(_digit(tmp_path)), "--model", str(tmp_path / "other.keras")]) == cli.EXIT_INVALID
    assert "takes (32, 32, 3) and gives (3,), not 28x28x1 images and 10 classes" in _one_line(capsys)


def test_a_large_sixteen_bit_image_is_brought_down_before_its_paper_is_estimated(tmp_path):
    gray = np.asarray(Image.fromarray(glyph(5, 64, np.random.default_rng(5))).resize((3000, 3000)))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    loaded = predict.load_gray(tmp_path / "deep.png")
    assert loaded.shape == (1024, 1024) and 0 <= loaded.min() and loaded.max() <= 255.5
